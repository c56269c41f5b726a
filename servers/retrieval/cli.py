"""``sdar-retrieval`` (serve) and ``sdar-retrieval-index`` (build an index from a JSONL corpus)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["index_main", "main", "wsgi_app"]


def wsgi_app(
    index: str,
    k1: float,
    b: float,
    search_threads: int,
    max_queries: int,
    max_topk: int,
    retriever: str = "bm25",
    encoder: str | None = None,
) -> Any:
    """The service as one worker process serves it."""
    from sdar_envs.searchqa.search import DenseSearcher, LocalSearcher, Searcher
    from servers.retrieval.app import Limits, create_app

    limits = Limits(max_queries=max_queries, max_topk=max_topk)
    searcher: Searcher
    if retriever == "dense":
        searcher = dense = DenseSearcher(index, encoder=encoder, threads=search_threads)
        name, docs, encoder = dense.dense.index_dir.name, dense.dense.num_docs, dense.dense.info["encoder"]
    else:
        searcher = bm25 = LocalSearcher(index, k1=k1, b=b, threads=search_threads)
        name, docs = bm25.bm25.index_dir.name, bm25.bm25.num_docs
    return create_app(searcher, limits=limits, index_name=name, num_docs=docs, retriever=retriever, encoder=encoder)


def _index_for(corpus: str | None, retriever: str, encoder: str | None) -> str:
    from sdar_envs.searchqa.data import default_corpus

    source = Path(corpus) if corpus else default_corpus()
    if retriever == "dense":
        from sdar_envs.dense import DEFAULT_ENCODER, cached_dense_index

        return str(cached_dense_index(source, "searchqa", encoder=encoder or DEFAULT_ENCODER))
    from sdar_envs.lucene import cached_index

    return str(cached_index(source, "searchqa"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sdar-retrieval", description="Search-R1 compatible retrieval service (BM25 or dense)."
    )
    p.add_argument(
        "--retriever",
        choices=["bm25", "dense"],
        default="bm25",
        help="bm25: Lucene (default); dense: a FAISS index of sentence embeddings, as the SDAR reference (e5)",
    )
    p.add_argument(
        "--encoder",
        help="dense: the query encoder, which must be the index's (default: the one it was built with; "
        "all-MiniLM-L6-v2 for an index built here from --corpus)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--index", help="an index folder from sdar-retrieval-index (Lucene, or --dense FAISS)")
    src.add_argument("--corpus", help="a JSONL corpus to index on first start (cached); default: the shipped one")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 inside containers)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each holds a JVM, ~200 MB)")
    p.add_argument("--threads", type=int, default=8, help="request threads per worker")
    p.add_argument("--search-threads", type=int, default=2, help="Lucene (or FAISS) threads per batch search")
    p.add_argument("--k1", type=float, default=0.9, help="BM25 k1")
    p.add_argument("--b", type=float, default=0.4, help="BM25 b")
    p.add_argument("--max-queries", type=int, default=1024, help="queries per request")
    p.add_argument("--max-topk", type=int, default=100)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.index and not Path(args.index).is_dir():
        print(f"sdar-retrieval: no index folder at {args.index}", file=sys.stderr)
        return 2
    if args.index and args.retriever == "dense" and not (Path(args.index) / "encoder.json").is_file():
        print(
            f"sdar-retrieval: {args.index} is not a dense index (sdar-retrieval-index --dense builds one)",
            file=sys.stderr,
        )
        return 2
    if args.index and args.retriever == "bm25" and (Path(args.index) / "encoder.json").is_file():
        print(f"sdar-retrieval: {args.index} is a dense index: pass --retriever dense", file=sys.stderr)
        return 2
    if not args.index:  # build once here, not in every worker
        from sdar_envs.dense import DenseIndexError

        try:
            args.index = _index_for(args.corpus, args.retriever, args.encoder)
        except DenseIndexError as e:
            print(f"sdar-retrieval: {e}", file=sys.stderr)
            return 2
    from servers.asgi import serve

    settings = {
        "index": str(args.index),
        "k1": args.k1,
        "b": args.b,
        "search_threads": args.search_threads,
        "max_queries": args.max_queries,
        "max_topk": args.max_topk,
        "retriever": args.retriever,
        "encoder": args.encoder,
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
        prog="sdar-retrieval-index",
        description="Build a BM25 Lucene index, or with --dense a FAISS index of sentence embeddings, "
        "from a JSONL corpus.",
    )
    p.add_argument("--corpus", required=True, help='JSONL (or .jsonl.gz) with {"id", "contents"} per line')
    p.add_argument("--index", required=True, help="output folder")
    p.add_argument("--threads", type=int, default=2, help="BM25: indexing threads")
    p.add_argument("--dense", action="store_true", help="a dense FAISS flat index instead of a Lucene one")
    p.add_argument(
        "--encoder",
        default="all-MiniLM-L6-v2",
        help="dense: a sentence-transformers encoder, a folder or a hub name (intfloat/e5-base-v2 as the "
        "reference; e5 gets its query:/passage: prefixes) [default: all-MiniLM-L6-v2, from its wheel]",
    )
    p.add_argument("--batch-size", type=int, default=64, help="dense: passages per encoder forward")
    p.add_argument("--shard-size", type=int, default=4096, help="dense: passages per resumable shard")
    args = p.parse_args(argv)
    from sdar_envs.dense import DenseIndexError, build_dense_index
    from sdar_envs.lucene import LuceneIndexError, LuceneUnavailable, build_index

    try:
        if args.dense:
            out = build_dense_index(
                args.corpus, args.index, encoder=args.encoder, batch_size=args.batch_size, shard_size=args.shard_size
            )
        else:
            out = build_index(args.corpus, args.index, threads=args.threads)
    except (LuceneIndexError, LuceneUnavailable, DenseIndexError) as e:
        print(f"sdar-retrieval-index: {e}", file=sys.stderr)
        return 2
    print(f"index written to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
