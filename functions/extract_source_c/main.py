"""HTTP handler: extract Source C (CoinGecko markets, paged) into raw batches, within the shared rate limit."""

import functions_framework

from common.api.inbound import json_framework_errors, stage_response
from common.pipeline import run_extract

json_framework_errors(functions_framework.errorhandler)  # the framework's own 404s and crashes answer JSON too


@functions_framework.http
def extract_source_c(request):
    return stage_response(request, lambda wiring: run_extract("source_c", wiring))
