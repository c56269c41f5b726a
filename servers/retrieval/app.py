"""The retrieval service's Flask app: ``POST /retrieve`` (Search-R1's API) and ``GET /health``.

Request::

    {"queries": ["..."], "topk": 3, "return_scores": true}

Answer: ``{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}`` with one list per
query (just the documents when ``return_scores`` is false, as Search-R1's server does). A batch is
answered by one Lucene batch search. Every bad request gets a 4xx JSON ``{"error": message}``; nothing
a client sends produces a 500 or a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from sdar_envs.searchqa.search import Passage, Searcher

__all__ = ["Limits", "create_app"]

log = logging.getLogger("sdar.retrieval")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests get a 4xx, not a slow server."""

    max_queries: int = 1024
    max_topk: int = 100
    max_query_chars: int = 2048
    max_body_bytes: int = 2 << 20
    default_topk: int = 3

    def __post_init__(self) -> None:
        for name in ("max_queries", "max_topk", "max_query_chars", "max_body_bytes", "default_topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.default_topk > self.max_topk:
            raise ValueError("default_topk must be <= max_topk")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _validate(body: Any, limits: Limits) -> tuple[list[str], int, bool]:
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object like {"queries": ["..."], "topk": 3}')
    unknown = set(body) - {"queries", "topk", "return_scores"}
    if unknown:
        raise BadRequest(f"unknown field(s) {sorted(unknown)}; allowed: queries, topk, return_scores")
    queries = body.get("queries")
    if not isinstance(queries, list) or not queries:
        raise BadRequest("'queries' must be a non-empty list of strings")
    if len(queries) > limits.max_queries:
        raise BadRequest(f"too many queries: {len(queries)} > {limits.max_queries} per request", 413)
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise BadRequest(f"queries[{i}] must be a string")
        if len(q) > limits.max_query_chars:
            raise BadRequest(f"queries[{i}] is longer than {limits.max_query_chars} characters", 413)
    topk = body.get("topk", limits.default_topk)
    if topk is None:
        topk = limits.default_topk
    if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= limits.max_topk:
        raise BadRequest(f"'topk' must be an integer in [1, {limits.max_topk}]")
    return_scores = body.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest("'return_scores' must be true or false")
    return queries, topk, return_scores


def _document(p: Passage) -> dict[str, str]:
    return {"id": p.id, "contents": p.contents}


def create_app(
    searcher: Searcher,
    *,
    limits: Limits | None = None,
    index_name: str = "",
    num_docs: int | None = None,
    retriever: str = "bm25",
    encoder: str | None = None,
) -> Flask:
    """The WSGI app over any :class:`~sdar_envs.searchqa.search.Searcher`."""
    limits = limits or Limits()
    app = Flask("sdar-retrieval", static_folder=None)  # no /static route serving the working directory
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask's default provider has it
    started = time.time()

    @app.errorhandler(BadRequest)
    def bad_request(e: BadRequest):
        return jsonify(error=str(e)), e.status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return jsonify(error=f"{e.code} {e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        log.exception("retrieval failed")
        return jsonify(error="internal error while searching; see the server log"), 500

    @app.get("/health")
    def health():
        return jsonify(
            status="ok",
            retriever=retriever,
            encoder=encoder,
            index=index_name,
            num_docs=num_docs,
            uptime_s=round(time.time() - started, 1),
        )

    @app.post("/retrieve")
    def retrieve():
        if not request.is_json:
            raise BadRequest("send JSON with Content-Type: application/json", 415)
        raw = request.get_data(cache=False)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the body is not UTF-8") from None
        try:
            body = request.json_module.loads(text) if text.strip() else None
        except ValueError as e:
            raise BadRequest(f"the body is not valid JSON ({e})") from None
        except RecursionError:
            raise BadRequest("the body nests too deeply") from None
        queries, topk, return_scores = _validate(body, limits)
        results: Sequence[Sequence[Passage]] = searcher.search(queries, topk)
        if return_scores:
            out = [[{"document": _document(p), "score": p.score} for p in per] for per in results]
        else:
            out = [[_document(p) for p in per] for per in results]
        return jsonify(result=out)

    return app
