"""HTTP handler: transform pending raw batches into normalized records (bad rows to quarantine)."""

import functions_framework

from common.api.inbound import json_framework_errors, stage_response
from common.pipeline import run_transform

json_framework_errors(functions_framework.errorhandler)  # the framework's own 404s and crashes answer JSON too


@functions_framework.http
def transform_load(request):
    return stage_response(request, run_transform)
