"""``sdar-webshop``: serve the WebShop site (uvicorn + the Flask app, 127.0.0.1 by default)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "wsgi_app"]


def wsgi_app(index: str, colour: str) -> Any:
    """The site as one worker process serves it (the catalogue files come from the environment)."""
    from sdar_envs.webshop.shop import Shop
    from servers.webshop.app import create_app

    return create_app(Shop(index_dir=index, colour=colour))  # type: ignore[arg-type]  # argparse's choices


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sdar-webshop", description="The WebShop site (browse it, or point SDAR/WebShop-v0 at it)."
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 inside containers)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2, help="worker processes (each holds the catalogue and a JVM)")
    p.add_argument("--threads", type=int, default=8, help="request threads per worker")
    p.add_argument("--colour", choices=["original", "words"], default="original", help="the reward's colour matching")
    p.add_argument(
        "--products", help="items_shuffle*.json (default: the shipped 1k catalogue; the full 1.18M file works)"
    )
    p.add_argument("--attributes", help="items_ins_v2*.json matching --products")
    p.add_argument("--human", help="items_human_ins*.json matching --products")
    p.add_argument("--index", help="a prebuilt Lucene index of the catalogue's search documents")
    args = p.parse_args(argv)
    import os

    for flag, var in (
        ("products", "SDAR_WEBSHOP_PRODUCTS"),
        ("attributes", "SDAR_WEBSHOP_ATTRIBUTES"),
        ("human", "SDAR_WEBSHOP_HUMAN"),
    ):
        if getattr(args, flag):
            os.environ[var] = getattr(args, flag)  # the workers (and the env's HTTP client) read the same
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from sdar_envs.lucene import cached_index
    from sdar_envs.webshop.shop import Shop
    from servers.asgi import serve

    index = args.index or cached_index(Shop().documents(), "webshop")  # built once here, not in every worker
    serve(
        "servers.webshop.cli:wsgi_app",
        {"index": str(index), "colour": args.colour},
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        name="sdar-webshop",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
