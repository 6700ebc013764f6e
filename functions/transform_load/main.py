"""HTTP handler: transform pending raw batches into normalized records (bad rows to quarantine)."""

import functions_framework

from common.http import stage_response
from common.pipeline import run_transform


@functions_framework.http
def transform_load(request):
    return stage_response(request, run_transform)
