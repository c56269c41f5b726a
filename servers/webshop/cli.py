"""``sdar-webshop``: serve the WebShop site under gunicorn (127.0.0.1 by default)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdar-webshop", description="The WebShop site (browse it, or point SDAR/WebShop-v0 at it).")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 inside containers)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (each holds the catalogue and a JVM)")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--colour", choices=["original", "words"], default="original", help="the reward's colour matching")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from sdar_envs.lucene import cached_index
    from sdar_envs.webshop.catalog import SEARCH_DOCUMENTS
    from servers.serving import serve

    index = cached_index(SEARCH_DOCUMENTS, "webshop")  # built once here, not in every worker

    def factory():  # noqa: ANN202
        from sdar_envs.webshop.shop import Shop
        from servers.webshop.app import create_app

        return create_app(Shop(index_dir=index, colour=args.colour))

    serve(factory, host=args.host, port=args.port, workers=args.workers, threads=args.threads, name="sdar-webshop")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
