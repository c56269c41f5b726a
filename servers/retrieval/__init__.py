"""``sdar-retrieval``: a Search-R1 compatible BM25 retrieval service over a Pyserini Lucene index."""

from servers.retrieval.app import Limits, create_app

__all__ = ["Limits", "create_app"]
