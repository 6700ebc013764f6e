"""HTTP handler: the public REST API (a Flask app built on first call, served through the function)."""

import functions_framework
from werkzeug.wrappers import Response

from common.api.app import app_for_environment


@functions_framework.http
def http_api(request):
    return Response.from_app(app_for_environment().wsgi_app, request.environ)
