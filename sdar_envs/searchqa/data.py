"""Search-QA data: the shipped passage corpus and the question sets, in one record shape.

Every loader returns :class:`QARecord` ``(id, question, golden_answers, data_source)`` in file order.
Splits are deterministic and stable: a record is in ``test`` when the first byte of
``sha1(id)`` is below 52 (about 20%), else in ``train``, so adding records never moves old ones.

Datasets (``DATASETS``; files under ``data/questions``, provenance in ``data/SOURCE.md``):

==================  =====  ===============  ====================================================
name                n      data_source      evidence in the shipped corpus
==================  =====  ===============  ====================================================
``nq``              3610   nq               NQ-open dev; gold passages of 2655 of them
``nq_oracle``       2655   nq               the NQ-open dev questions whose gold passage is known
``hotpotqa``        200    hotpotqa         dev first 100 + HippoRAG train 100, contexts indexed
``musique``         299    musique          MuSiQue-Ans train 200 + HippoRAG train 100, paragraphs
``hotpotqa_500``    500    hotpotqa         R1-Searcher's dev sample, no context in the corpus
``musique_500``     500    musique          R1-Searcher's dev sample, no context
``2wikimultihopqa`` 500    2wikimultihopqa  R1-Searcher's dev sample, little context
``bamboogle``       125    bamboogle        all of Bamboogle, no context
==================  =====  ===============  ====================================================

``DEFAULT_DATASETS`` are the ones whose evidence is in the corpus: nq, hotpotqa, musique.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CORPUS_PATH",
    "DATASETS",
    "DEFAULT_DATASETS",
    "QARecord",
    "load_dataset",
    "load_questions",
    "split_of",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
QUESTIONS = DATA_DIR / "questions"
CORPUS_PATH = DATA_DIR / "searchqa_mini_corpus.jsonl.gz"
Split = Literal["train", "test", "all"]


@dataclass(frozen=True)
class QARecord:
    id: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str


def split_of(record_id: str) -> Literal["train", "test"]:
    """``test`` for about 20% of ids (sha1-based, stable across machines and file edits), else ``train``."""
    return "test" if hashlib.sha1(record_id.encode()).digest()[0] < 52 else "train"


def _lines(name: str) -> Iterator[dict[str, Any]]:
    with gzip.open(QUESTIONS / name, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _json(name: str) -> Any:
    with gzip.open(QUESTIONS / name, "rt", encoding="utf-8") as f:
        return json.load(f)


def _answers(*values: Any) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        if isinstance(v, str) and v.strip().startswith("[") and v.strip().endswith("]"):
            v = ast.literal_eval(v)  # HippoRAG stores lists as their Python repr
        for a in [v] if isinstance(v, str) else list(v or []):
            a = str(a).strip()
            if a and a not in out:
                out.append(a)
    return tuple(out)


def _nq() -> list[QARecord]:
    return [
        QARecord(f"nq-dev-{i}", r["question"], _answers(r["answer"]), "nq")
        for i, r in enumerate(_lines("NQ-open.dev.jsonl.gz"))
    ]


def _nq_oracle() -> list[QARecord]:
    # The same questions as NQ-open dev: reuse those ids so the two sets agree on splits.
    ids = {r.question: r.id for r in _nq()}
    out = []
    for i, r in enumerate(_lines("nq-open-oracle.jsonl.gz")):
        out.append(QARecord(ids.get(r["question"], f"nq-oracle-{i}"), r["question"], _answers(r["answers"]), "nq"))
    return out


def _hotpotqa() -> list[QARecord]:
    out = [
        QARecord(f"hotpotqa-dev-{i}", r["question"], _answers(r["answer"]), "hotpotqa")
        for i, r in enumerate(_json("meve_hotpot_dev_first100_hfformat.json.gz"))
    ]
    out += [
        QARecord(f"hotpotqa-{r['_id']}", r["question"], _answers(r["answer"]), "hotpotqa")
        for r in _json("hipporag_hotpotqa_train.json.gz")
    ]
    return out


def _musique() -> list[QARecord]:
    out: dict[str, QARecord] = {}
    for r in _lines("musique_ans_v1.0_train-200.jsonl.gz"):
        out[r["id"]] = QARecord(
            f"musique-{r['id']}", r["question"], _answers(r["answer"], r.get("answer_aliases")), "musique"
        )
    for r in _json("hipporag_musique_train.json.gz"):
        out.setdefault(
            r["id"],
            QARecord(f"musique-{r['id']}", r["question"], _answers(r["answer"], r.get("answer_aliases")), "musique"),
        )
    return list(out.values())


def _r1searcher(file: str, source: str, prefix: str) -> Callable[[], list[QARecord]]:
    def load() -> list[QARecord]:
        return [QARecord(f"{prefix}-{r['idx']}", r["question"], _answers(r["answer"]), source) for r in _lines(file)]

    return load


DATASETS: dict[str, Callable[[], list[QARecord]]] = {
    "nq": _nq,
    "nq_oracle": _nq_oracle,
    "hotpotqa": _hotpotqa,
    "musique": _musique,
    "hotpotqa_500": _r1searcher("r1searcher_hotpotqa_500.jsonl.gz", "hotpotqa", "hotpotqa500"),
    "musique_500": _r1searcher("r1searcher_musique_500.jsonl.gz", "musique", "musique500"),
    "2wikimultihopqa": _r1searcher("r1searcher_2wiki_500.jsonl.gz", "2wikimultihopqa", "2wiki500"),
    "bamboogle": _r1searcher("r1searcher_bamboogle.jsonl.gz", "bamboogle", "bamboogle"),
}
DEFAULT_DATASETS = ("nq", "hotpotqa", "musique")


@cache
def load_dataset(name: str) -> tuple[QARecord, ...]:
    """All records of one dataset, in file order."""
    if name not in DATASETS:
        raise ValueError(f"unknown Search-QA dataset {name!r}; choose from {', '.join(DATASETS)}")
    return tuple(DATASETS[name]())


def load_questions(datasets: Sequence[str] = DEFAULT_DATASETS, split: Split = "train") -> list[QARecord]:
    """The records of several datasets (in the given order, each in file order) in one split."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if isinstance(datasets, str):
        datasets = [datasets]
    out = [r for name in datasets for r in load_dataset(name) if split == "all" or split_of(r.id) == split]
    if not out:
        raise ValueError(f"no questions in datasets {list(datasets)} for split {split!r}")
    return out


def default_corpus() -> Path:
    """The corpus to index when none is given: ``SDAR_SEARCHQA_CORPUS`` or the shipped 17,825 passages."""
    return Path(os.environ.get("SDAR_SEARCHQA_CORPUS", CORPUS_PATH))
