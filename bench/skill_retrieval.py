"""Which skill each retrieval tier puts first for real ALFWorld instructions: the share whose top skill is
the task type's own, per tier, side by side.

    .venv/bin/python bench/skill_retrieval.py [--per-type 8] [--split valid_seen]

Instructions are read from the real engine (the first N games of each task type). The embedding tier
is shown as shipped (titles, routed by task type) and with the alternatives it was chosen over.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

from sdar_envs.alfworld.data import TASK_TYPES, list_tasks
from skills import SkillLibrary, SkillQuery
from skills.retrieval import EmbeddingRetriever, minilm_encoder


class _TextEmbedding(EmbeddingRetriever):
    """The alternative: embed title + procedure text."""

    def select(self, query, candidates, stats, k):
        if self.route_by_type:
            candidates = [s for s in candidates if s.applies_to(query.task_type)]
        sims = [float(self.encode([f"{s.title}. {s.text}"])[0] @ self.encode([query.task])[0]) for s in candidates]
        return [candidates[i] for i in np.argsort(sims, kind="stable")[::-1][:k]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-type", type=int, default=8)
    p.add_argument("--split", default="valid_seen")
    args = p.parse_args()
    env = gym.make("SDAR/ALFWorld-v0", split=args.split)
    queries = []
    tasks = list_tasks(args.split)
    for long_name, short in TASK_TYPES.items():
        for task in [t for t in tasks if t.task_type == long_name][: args.per_type]:
            _, info = env.reset(options={"task_id": task.task_id})
            queries.append(SkillQuery("alfworld", task.task_id, info["task"], short))
    encode = minilm_encoder()
    tiers = {
        "keyword": SkillLibrary.from_seed_banks(["alfworld"], tier="keyword"),
        "embedding (shipped: titles, routed)": SkillLibrary.from_seed_banks(
            ["alfworld"], tier=EmbeddingRetriever(encode)
        ),
        "embedding: titles, not routed": SkillLibrary.from_seed_banks(
            ["alfworld"], tier=EmbeddingRetriever(encode, route_by_type=False)
        ),
        "embedding: title + text, routed": SkillLibrary.from_seed_banks(["alfworld"], tier=_TextEmbedding(encode)),
        "embedding: title + text, not routed": SkillLibrary.from_seed_banks(
            ["alfworld"], tier=_TextEmbedding(encode, route_by_type=False)
        ),
        "random (seed 0)": SkillLibrary.from_seed_banks(["alfworld"], tier="random", seed=0),
        "ucb (no outcomes yet)": SkillLibrary.from_seed_banks(["alfworld"], tier="ucb"),
    }
    print(
        f"{len(queries)} real {args.split} instructions ({args.per_type} per task type); top-1 is the task type's own skill:"
    )
    print("| tier | hits | share |")
    print("|---|---|---|")
    for name, lib in tiers.items():
        hits = sum(q.task_type in lib.retrieve(q, 1)[0].task_types for q in queries)
        print(f"| {name} | {hits}/{len(queries)} | {hits / len(queries):.0%} |")


if __name__ == "__main__":
    main()
