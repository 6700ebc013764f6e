"""HTTP handler: the public REST API (a Flask app built on first call, served through the function)."""

import functions_framework

from common.api.app import ApiHandler
from common.api.inbound import json_framework_errors

json_framework_errors(functions_framework.errorhandler)  # the framework's own 404s and crashes answer JSON too
serve = ApiHandler()  # the app is built on the first request: after gunicorn forks


@functions_framework.http
def http_api(request):
    return serve(request)
