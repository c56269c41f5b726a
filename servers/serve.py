"""``sdar-serve``: the no-Docker equivalent of ``docker compose up``. Starts the WebShop site and the
retrieval service as local processes (uvicorn, 127.0.0.1 by default), waits until both answer
``/health``, prints the variables that point the environments at them, and stops both cleanly on
Ctrl-C / SIGTERM (or when one of them dies, saying which).

    sdar-serve                       # webshop on :3000, retrieval on :8000
    sdar-serve --services webshop --webshop-port 3100 --workers 4
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from servers.process import ServerProcess

__all__ = ["main"]

SERVICES = {
    "webshop": ("servers.webshop", "SDAR_WEBSHOP_URL"),
    "retrieval": ("servers.retrieval", "SDAR_RETRIEVAL_URL"),
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sdar-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--services", nargs="+", choices=list(SERVICES), default=list(SERVICES))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--webshop-port", type=int, default=3000)
    p.add_argument("--retrieval-port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2, help="worker processes per service")
    p.add_argument("--log-dir", default="runs/serve", help="one log file per service")
    p.add_argument(
        "--start-timeout", type=float, default=300.0, help="seconds to wait for health (first start builds indexes)"
    )
    args = p.parse_args(argv)
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    ports = {"webshop": args.webshop_port, "retrieval": args.retrieval_port}
    running: list[tuple[str, ServerProcess]] = []
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        for name in args.services:
            module, _ = SERVICES[name]
            server = ServerProcess(
                module, ["--workers", str(args.workers)], port=ports[name], log=logs / f"{name}.log", host=args.host
            )
            print(f"starting {name} on {server.url} (log: {server.log}) ...", flush=True)
            server.start(timeout=args.start_timeout)
            running.append((name, server))
        print("all healthy. Point the environments at them with:", flush=True)
        for name, server in running:
            print(f"  export {SERVICES[name][1]}={server.url}", flush=True)
        print("Ctrl-C stops them.", flush=True)
        while not stop["now"]:
            for name, server in running:
                if server.proc is not None and server.proc.poll() is not None:
                    print(
                        f"sdar-serve: {name} exited with {server.proc.returncode}; see {server.log}",
                        file=sys.stderr,
                        flush=True,
                    )
                    stop["now"], code = True, 1
            time.sleep(0.5)
    except (RuntimeError, TimeoutError) as e:
        print(f"sdar-serve: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        for name, server in reversed(running):
            server.stop()
            print(f"stopped {name}", flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
