"""HTTP handler: extract Source A. Answers 501 until its source declaration lands."""

import functions_framework

from common.errors import NotImplementedYet
from common.http import error_response, request_id_of


@functions_framework.http
def extract_source_a(request):
    return error_response(
        NotImplementedYet("source_a extraction is not implemented yet; only source_b (CSV) is available"),
        request_id_of(request),
    )
