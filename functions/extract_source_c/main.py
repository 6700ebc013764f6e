"""HTTP handler: extract Source C (CoinGecko markets, paged) into raw batches, within the shared rate limit."""

import functions_framework

from common.http import stage_response
from common.pipeline import run_extract


@functions_framework.http
def extract_source_c(request):
    return stage_response(request, lambda wiring: run_extract("source_c", wiring))
