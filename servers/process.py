"""The suite's servers as local processes on 127.0.0.1: start, wait for health, stop (tests, benches, sdar-serve)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (a ``kill -9`` of ``sdar-serve``
    must not leave its services running on their ports); elsewhere a no-op."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent is already gone
        os.kill(os.getpid(), signal.SIGTERM)


class ServerProcess:
    """``python -m <module> <args> --port P``; waits for ``GET /health``; ``stop()`` sends SIGTERM."""

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        *,
        port: int | None = None,
        log: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.module, self.args = module, list(args)
        self.port = port or free_port()
        self.host = host
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> ServerProcess:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args, "--host", self.host, "--port", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its worker processes go with it (stop() signals the group)
            preexec_fn=die_with_parent,  # and it goes if whoever started it is killed
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}; see its log: {self.log}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.module} did not become healthy on {self.url} in {timeout} s")

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
