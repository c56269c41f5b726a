"""What a quoting clone's ``<think>`` holds, from an evaluation file (``sdar_train.eval --out``).

    python docs/real_model/searchqa/quote_stats.py docs/real_model/searchqa/eval-quoted30-200.json

Each episode's searches are re-run against the shipped index (as ``sdar_envs.searchqa.answerability``
replays them). Counted over answers that follow a ``<think>``: the quote is words of the passages
(normalised substring), repeats the question, holds a gold answer; the passages hold one; right answers.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter

import gymnasium as gym

import sdar_envs  # noqa: F401  (registers the environments)
from sdar_envs.searchqa.env import parse_action
from sdar_envs.searchqa.metrics import normalize_answer


def _holds(text: str, answers: list[str]) -> bool:
    return any(f" {normalize_answer(a)} " in f" {normalize_answer(text)} " for a in answers if normalize_answer(a))


def main(path: str) -> dict[str, int]:
    results = json.load(open(path))["results"]
    env = gym.make("SDAR/SearchQA-v0", split="test")
    searcher, records = env.unwrapped.searcher, {r.id: r for r in env.unwrapped.records}
    counts: Counter[str] = Counter()
    for episode in results:
        actions = episode["actions"]
        last = parse_action(actions[-1]) if actions else None
        quote = re.search(r"<think>(.*?)</think>", actions[-1], re.DOTALL) if actions else None
        if last is None or last[0] != "answer" or quote is None:
            continue
        think = " ".join(quote.group(1).split())
        record = records[episode["task_id"]]
        queries = [p[1] for a in actions[:-1] if (p := parse_action(a)) and p[0] == "search"]
        seen = " ".join(p.contents for q in queries for p in searcher.search([q], 3)[0])
        in_quote = _holds(think, record.golden_answers)
        counts["answers after a think"] += 1
        counts["quote is words of the passages"] += bool(normalize_answer(think)) and normalize_answer(
            think
        ) in normalize_answer(seen)
        counts["quote repeats the question"] += normalize_answer(think) == normalize_answer(record.question)
        counts["passages hold a gold answer"] += _holds(seen, record.golden_answers)
        counts["quote holds a gold answer"] += in_quote
        counts["right, quote holding one"] += in_quote and bool(episode["won"])
        counts["right"] += bool(episode["won"])
    return dict(counts)


if __name__ == "__main__":
    for key, value in main(sys.argv[1]).items():
        print(f"{key}: {value}")
