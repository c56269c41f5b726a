"""How many questions of each dataset the corpus can answer: a gold answer (normalised) occurs in the
normalised text of one of the top-k passages (BM25, or dense with ``--retriever dense``) when the raw
question is the query.

    python -m sdar_envs.searchqa.answerability --k 3 5 [--datasets nq hotpotqa ...] [--split all] [--retriever dense]

yes/no questions are left out of the percentages (their answer is never a span of a passage).

With ``--report eval.json`` (an ``sdar_train.eval`` report) it says instead whether a policy reads the
passages: exact match on the questions whose raw-question top-3 holds a gold answer and on the others,
how many of its answers are copied out of the passages its own searches returned, and how many of its
wrong answers are a passage's title or words of the question.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sdar_envs.searchqa.data import DATASETS, load_dataset, load_questions
from sdar_envs.searchqa.env import grounded_answer, parse_action, search_query
from sdar_envs.searchqa.metrics import normalize_answer
from sdar_envs.searchqa.search import RETRIEVERS, Searcher, make_searcher

__all__ = ["answerable_share", "grounding", "main"]


def answerable_share(searcher: Searcher, datasets: Sequence[str], split: str, ks: Sequence[int]) -> dict[str, dict]:
    out = {}
    for name in datasets:
        records = load_questions([name], split)  # type: ignore[arg-type]
        spans = [r for r in records if not {normalize_answer(a) for a in r.golden_answers} <= {"yes", "no"}]
        hits = searcher.search([r.question for r in spans], max(ks))
        row: dict[str, float] = {"n": len(records), "yes_no": len(records) - len(spans)}
        for k in ks:
            found = 0
            for r, passages in zip(spans, hits, strict=True):
                text = " ".join(normalize_answer(p.contents) for p in passages[:k])
                found += any(normalize_answer(a) and normalize_answer(a) in text for a in r.golden_answers)
            row[f"top{k}"] = found / len(spans) if spans else 0.0
        out[name] = row
    return out


def grounding(searcher: Searcher, report: dict[str, Any], topk: int = 3) -> dict[str, float]:
    """Whether an evaluated policy reads the passages (``report``: an ``sdar_train.eval`` report of
    ``SDAR/SearchQA-v0``; its searches are replayed, so ``topk`` must be the env's).

    ``answerable``/``em_answerable``: questions whose raw-question top-``topk`` holds a gold answer (the
    grounded expert answers them) and the policy's exact match on them; ``em_other`` on the rest;
    ``answered``: episodes that gave an answer; ``copied``: of those, answers that occur as whole words
    in the passages the episode's own searches returned (a yes or no counts as copied, as the grounded
    expert gives one); ``copied_right``: copied and exact. Two kinds of wrong answer, as shares of the
    wrong answers: ``wrong_title``, whole words of a returned passage's title (the page a passage is
    from, rarely the answer: 10% of the grounded expert's train answers); ``wrong_echo``, whole words of
    the question.
    """
    records = {r.id: r for name in DATASETS for r in load_dataset(name)}
    rows = report["results"]
    parsed = [[a for a in map(parse_action, row["actions"]) if a] for row in rows]
    answers = [next((c for kind, c in acts if kind == "answer"), None) for acts in parsed]
    queries = [[search_query(c) for kind, c in acts if kind == "search"] for acts in parsed]
    # every search in one call: the raw questions, then each episode's own queries in order
    hits = iter(searcher.search([records[r["task_id"]].question for r in rows] + list(chain(*queries)), topk))
    raw = [next(hits) for _ in rows]
    n = dict.fromkeys(("answerable", "em_answerable", "em_other", "answered", "copied", "copied_right"), 0)
    n |= dict.fromkeys(("wrong", "wrong_title", "wrong_echo"), 0)
    for row, passages, answer, searched in zip(rows, raw, answers, queries, strict=True):
        seen = [p for _ in searched for p in next(hits)]
        held = grounded_answer(records[row["task_id"]].golden_answers, passages) is not None
        n["answerable"] += held
        n["em_answerable" if held else "em_other"] += bool(row["won"])
        if answer is None:
            continue
        n["answered"] += 1
        copied = bool(normalize_answer(answer)) and grounded_answer([answer], seen) is not None
        n["copied"] += copied
        n["copied_right"] += bool(copied and row["won"])
        if not row["won"]:
            n["wrong"] += 1
            n["wrong_title"] += _holds([p.title for p in seen], answer)
            n["wrong_echo"] += _holds([records[row["task_id"]].question], answer)
    total, answerable = len(rows), n["answerable"]
    return {
        "episodes": total,
        "em": sum(bool(r["won"]) for r in rows) / total if total else 0.0,
        "answerable": answerable / total if total else 0.0,
        "em_answerable": n["em_answerable"] / answerable if answerable else 0.0,
        "em_other": n["em_other"] / (total - answerable) if total > answerable else 0.0,
        "answered": n["answered"] / total if total else 0.0,
        "copied": n["copied"] / n["answered"] if n["answered"] else 0.0,
        "copied_right": n["copied_right"] / n["answered"] if n["answered"] else 0.0,
        "wrong_title": n["wrong_title"] / n["wrong"] if n["wrong"] else 0.0,
        "wrong_echo": n["wrong_echo"] / n["wrong"] if n["wrong"] else 0.0,
    }


def _holds(texts: Sequence[str], answer: str) -> bool:
    """``answer``'s normalised words occur as whole words in one of ``texts`` (normalised)."""
    norm = normalize_answer(answer)
    return bool(norm) and any(f" {norm} " in f" {normalize_answer(t)} " for t in texts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--split", default="all", choices=["train", "test", "all"])
    p.add_argument("--k", nargs="+", type=int, default=[3, 5])
    p.add_argument("--retriever", choices=RETRIEVERS, default="bm25")
    p.add_argument("--encoder", help="dense: the encoder (default all-MiniLM-L6-v2, from its wheel)")
    p.add_argument("--report", nargs="+", help="sdar_train.eval reports: does each policy read the passages?")
    args = p.parse_args(argv)
    searcher = make_searcher(retriever=args.retriever, encoder=args.encoder)
    if args.report:
        cols = ["episodes", "em", "answerable", "em_answerable", "em_other", "answered", "copied", "copied_right"]
        cols += ["wrong_title", "wrong_echo"]
        table = Table(title="grounding (top-3 of each search replayed)", title_justify="left")
        for col in ["report", *cols]:
            table.add_column(col, justify="left" if col == "report" else "right")
        for path in args.report:
            with open(path) as f:
                row = grounding(searcher, json.load(f))
            table.add_row(Path(path).name, *[str(row[c]) if c == "episodes" else f"{row[c]:.3f}" for c in cols])
        Console(width=max(Console().width, 150)).print(table)  # piped output is 80 wide: the columns would fold
        return 0
    rows = answerable_share(searcher, args.datasets, args.split, args.k)
    how = "BM25 k1=0.9 b=0.4" if args.retriever == "bm25" else f"dense, {args.encoder or 'all-MiniLM-L6-v2'}"
    table = Table(title=f"answerable share ({how}, split={args.split})", title_justify="left")
    for col in ["dataset", "n", "yes/no", *[f"top-{k}" for k in args.k]]:
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for name, row in rows.items():
        table.add_row(name, str(row["n"]), str(row["yes_no"]), *[f"{row[f'top{k}']:.1%}" for k in args.k])
    Console().print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
