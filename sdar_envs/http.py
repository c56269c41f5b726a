"""The HTTP session the environments' service clients share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["retrying_session"]


def retrying_session(methods: Iterable[str] = ("GET",)) -> Any:
    """A ``requests.Session`` that sends a request once more when the connection under it broke (a
    pooled keep-alive connection the server had just closed, a reset); only for ``methods`` whose
    repetition is harmless (GET pages, retrieval searches). HTTP error statuses are not retried."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=1,
        connect=1,
        read=1,
        status=0,
        other=0,
        allowed_methods=frozenset(m.upper() for m in methods),
        backoff_factor=0,
        raise_on_status=False,
    )
    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, HTTPAdapter(max_retries=retry))
    return session
