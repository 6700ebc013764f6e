"""`etl serve`: the API under gunicorn (threads), the same server functions-framework uses."""

from __future__ import annotations

import gunicorn.app.base

from common.api.app import app_for_environment


class _Server(gunicorn.app.base.BaseApplication):
    def __init__(self, options: dict) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return app_for_environment()


def serve(host: str = "127.0.0.1", port: int = 8080, threads: int = 8) -> None:
    _Server({"bind": f"{host}:{port}", "workers": 1, "threads": threads, "loglevel": "warning",
             "accesslog": None,
             "control_socket_disable": True}).run()
