"""Running the suite's WSGI apps: uvicorn (asyncio + h11) in front, the Flask app in a2wsgi's thread pool.

Why not a thread-per-connection server (gunicorn's sync or gthread workers): there a client that sends
its headers one byte a minute holds a request thread the whole time, and a few dozen such sockets
block every request, ``/health`` included. Under uvicorn a slow or idle socket costs one coroutine; a
request reaches the app's threads only once it has arrived whole. Idle keep-alive connections stay
open 75 s, far longer than a client pauses between environment steps.

Each worker process builds its own app from ``factory(**settings)`` (a JVM cannot be shared across
processes), so the factory is named by an import path and its settings travel as JSON.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
from typing import Any

from servers.process import die_with_parent

__all__ = ["KEEP_ALIVE_S", "asgi_app", "serve"]

KEEP_ALIVE_S = 75
_SPEC = "SDAR_SERVE_SPEC"


def serve(
    factory: str, settings: dict[str, Any], *, host: str, port: int, workers: int, threads: int, name: str
) -> None:
    """Serve ``factory(**settings)`` (``"module:function"`` returning a WSGI app) on ``host:port``."""
    import uvicorn

    os.environ[_SPEC] = json.dumps({"factory": factory, "settings": settings, "threads": threads, "name": name})
    uvicorn.run(
        "servers.asgi:asgi_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=10,
        access_log=False,
        server_header=False,
        log_level="info",
    )


def asgi_app() -> Any:
    """What each uvicorn worker serves: the named WSGI app behind a2wsgi."""
    from a2wsgi import WSGIMiddleware

    spec = json.loads(os.environ[_SPEC])
    if multiprocessing.parent_process() is not None:  # a worker of uvicorn's supervisor: go when it goes
        die_with_parent()
    module, _, attr = spec["factory"].partition(":")
    app = getattr(importlib.import_module(module), attr)(**spec["settings"])
    return WSGIMiddleware(app, workers=int(spec["threads"]))
