"""What the environments' service clients share: a retrying HTTP session and service replicas."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

__all__ = ["Replicas", "retrying_session"]

T = TypeVar("T")


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


class Replicas:
    """The URLs of one stateless service's replicas (a list, or one comma-separated string). Requests
    are spread over them round-robin, each process starting at its own replica, and a replica that
    cannot be reached is passed over for the next: a request fails only when none answers."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        items = urls.split(",") if isinstance(urls, str) else list(urls)
        self.urls = [u.strip().rstrip("/") for u in items if u and u.strip()]
        if not self.urls:
            raise ValueError("no service URL given")
        self._next = os.getpid() % len(self.urls)
        self._lock = threading.Lock()
        self.requests: dict[str, int] = dict.fromkeys(self.urls, 0)  # answered requests per replica

    def __str__(self) -> str:
        return ", ".join(self.urls)

    def call(self, send: Callable[[str], T]) -> tuple[T, str]:
        """``send(base_url)`` on the next replica, then the others while they cannot be reached;
        returns its result and the replica that answered. Re-raises the last connection error."""
        import requests

        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self.urls)
        error: Exception | None = None
        for i in range(len(self.urls)):
            url = self.urls[(start + i) % len(self.urls)]
            try:
                result = send(url)
            except (requests.ConnectionError, requests.Timeout) as e:
                error = e
                continue
            with self._lock:
                self.requests[url] += 1
            return result, url
        assert error is not None
        raise error
