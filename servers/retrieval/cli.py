"""``sdar-retrieval`` (serve) and ``sdar-retrieval-index`` (build an index from a JSONL corpus)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["index_main", "main", "wsgi_app"]


def wsgi_app(index: str, k1: float, b: float, search_threads: int, max_queries: int, max_topk: int) -> Any:
    """The service as one worker process serves it."""
    from sdar_envs.searchqa.search import LocalSearcher
    from servers.retrieval.app import Limits, create_app

    searcher = LocalSearcher(index, k1=k1, b=b, threads=search_threads)
    limits = Limits(max_queries=max_queries, max_topk=max_topk)
    return create_app(searcher, limits=limits, index_name=searcher.bm25.index_dir.name, num_docs=searcher.bm25.num_docs)


def _index_for(corpus: str | None) -> str:
    from sdar_envs.lucene import cached_index
    from sdar_envs.searchqa.data import default_corpus

    return str(cached_index(Path(corpus) if corpus else default_corpus(), "searchqa"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdar-retrieval", description="Search-R1 compatible BM25 retrieval service.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--index", help="a Lucene index folder (from sdar-retrieval-index)")
    src.add_argument("--corpus", help="a JSONL corpus to index on first start (cached); default: the shipped one")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 inside containers)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each holds a JVM, ~200 MB)")
    p.add_argument("--threads", type=int, default=8, help="request threads per worker")
    p.add_argument("--search-threads", type=int, default=2, help="Lucene threads per batch search")
    p.add_argument("--k1", type=float, default=0.9)
    p.add_argument("--b", type=float, default=0.4)
    p.add_argument("--max-queries", type=int, default=1024, help="queries per request")
    p.add_argument("--max-topk", type=int, default=100)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.index and not Path(args.index).is_dir():
        print(f"sdar-retrieval: no index folder at {args.index}", file=sys.stderr)
        return 2
    if not args.index:
        args.index = _index_for(args.corpus)  # build once here, not in every worker
    from servers.asgi import serve

    settings = {
        "index": str(args.index),
        "k1": args.k1,
        "b": args.b,
        "search_threads": args.search_threads,
        "max_queries": args.max_queries,
        "max_topk": args.max_topk,
    }
    serve(
        "servers.retrieval.cli:wsgi_app",
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        name="sdar-retrieval",
    )
    return 0


def index_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sdar-retrieval-index", description="Build a BM25 Lucene index from a JSONL corpus."
    )
    p.add_argument("--corpus", required=True, help='JSONL (or .jsonl.gz) with {"id", "contents"} per line')
    p.add_argument("--index", required=True, help="output folder")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from sdar_envs.lucene import LuceneIndexError, LuceneUnavailable, build_index

    try:
        out = build_index(args.corpus, args.index, threads=args.threads)
    except (LuceneIndexError, LuceneUnavailable) as e:
        print(f"sdar-retrieval-index: {e}", file=sys.stderr)
        return 2
    print(f"index written to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
