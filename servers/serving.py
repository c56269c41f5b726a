"""Running the suite's WSGI apps under gunicorn (gthread workers), shared by the console commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["serve"]


def serve(app_factory: Callable[[], Any], *, host: str, port: int, workers: int, threads: int, name: str) -> None:
    """Each worker builds its own app after the fork: a JVM (Lucene) cannot be shared across a fork."""
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": f"{host}:{port}",
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",
                "proc_name": name,
                "timeout": 120,
                # a WebShop search of 500 characters is a URL of up to ~6 kB percent-encoded (4-byte characters)
                "limit_request_line": 8190,
                "accesslog": None,
                "preload_app": False,
                "control_socket_disable": True,  # gunicorn >= 27; several servers may run side by side
            }.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return app_factory()

    _App().run()
