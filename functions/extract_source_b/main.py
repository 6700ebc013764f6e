"""HTTP handler: extract Source B (the historical CSV) into raw batches, resuming from its checkpoint."""

import functions_framework

from common.http import stage_response
from common.pipeline import run_extract


@functions_framework.http
def extract_source_b(request):
    return stage_response(request, lambda wiring: run_extract("source_b", wiring))
