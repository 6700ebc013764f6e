"""HTTP handler: extract Source B (the historical CSV) into raw batches, resuming from its checkpoint."""

import functions_framework

from common.api.inbound import json_framework_errors, stage_response
from common.pipeline import run_extract

json_framework_errors(functions_framework.errorhandler)  # the framework's own 404s and crashes answer JSON too


@functions_framework.http
def extract_source_b(request):
    return stage_response(request, lambda wiring: run_extract("source_b", wiring))
