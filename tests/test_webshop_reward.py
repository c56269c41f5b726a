"""WebShop's catalogue, goals and reward on the shipped 1k catalogue."""

from __future__ import annotations

import random
import subprocess
import sys

from sdar_envs.webshop.catalog import load_catalog
from sdar_envs.webshop.reward import normalize_color, score_purchase, target_options


def test_goal_counts_and_splits_match_the_original_construction():
    catalog = load_catalog()
    assert len(catalog.products) == 1000
    assert len(catalog.synthetic_goals) == 6910  # what the original code builds on the 1k catalogue
    assert len(catalog.human_goals) == 13
    assert len(catalog.goals("synthetic", "test")) == 500 and len(catalog.goals("synthetic", "train")) == 6410
    goal = catalog.synthetic_goals[0]
    assert goal.instruction.endswith(f", and price lower than {goal.price_upper:.2f} dollars")
    assert all(g.price_upper > catalog.by_asin[g.asin].price for g in catalog.synthetic_goals)
    assert {p.category for p in catalog.products} == {"beauty", "electronics", "fashion", "garden", "grocery"}


def test_prices_and_goals_are_the_same_in_every_process():
    code = (
        "from sdar_envs.webshop.catalog import load_catalog; c = load_catalog();"
        "print(repr([round(p.price, 6) for p in c.products[:50]]), c.synthetic_goals[7].instruction)"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(outs) == 1
    catalog = load_catalog()
    assert outs.pop().strip().endswith(catalog.synthetic_goals[7].instruction)
    ranged = [p for p in catalog.products if len(p.pricing) == 2]
    assert ranged and all(min(p.pricing) <= p.price <= max(p.pricing) for p in ranged)
    other = load_catalog(seed=1)  # the seed moves prices inside their ranges, nothing else
    assert [p.price for p in other.products if len(p.pricing) == 2] != [p.price for p in ranged]
    assert [p.price for p in other.products if len(p.pricing) == 1] == [p.price for p in catalog.products if len(p.pricing) == 1]


def test_buying_the_target_with_its_options_scores_1():
    catalog = load_catalog()
    human = [score_purchase(catalog.by_asin[g.asin], g, target_options(g, catalog.by_asin[g.asin])).score for g in catalog.human_goals]
    assert human == [1.0] * 13
    test = catalog.goals("synthetic", "test")
    synthetic = [score_purchase(catalog.by_asin[g.asin], g, target_options(g, catalog.by_asin[g.asin])).score for g in test]
    assert sum(s == 1.0 for s in synthetic) >= 0.95 * len(test)


def test_a_random_product_scores_near_zero_and_wrong_options_score_less():
    catalog = load_catalog()
    rng = random.Random(0)
    test = catalog.goals("synthetic", "test")
    random_scores = [score_purchase(rng.choice(catalog.products), g, {}).score for g in test]
    assert sum(random_scores) / len(random_scores) < 0.1
    right, wrong = [], []
    for g in test:
        product = catalog.by_asin[g.asin]
        named = dict(g.goal_options)
        swap = next(((k, v) for k, vals in product.options.items() for v in vals if k in named and v != named[k]), None)
        if swap is None:
            continue
        right.append(score_purchase(product, g, named).score)
        wrong.append(score_purchase(product, g, {**named, swap[0]: swap[1]}).score)
    assert len(right) > 100
    assert sum(wrong) / len(wrong) < sum(right) / len(right)
    assert all(w <= r for w, r in zip(wrong, right, strict=True))


def test_the_colour_quirk_is_kept_by_default_and_can_be_corrected():
    assert normalize_color("rectangular") == "tan"  # the original's substring match
    assert normalize_color("rectangular", "words") == "rectangular"
    assert normalize_color("black forest") == "black" and normalize_color("dark navy", "words") == "dark"


def test_search_documents_are_rebuilt_from_the_catalogue_exactly(tmp_path):
    """What a user's own (e.g. the full 1.18M-product) catalogue is indexed from: the original's text."""
    import gzip
    import json

    from sdar_envs.webshop.catalog import SEARCH_DOCUMENTS, write_search_documents

    catalog = load_catalog()
    out = write_search_documents(catalog, tmp_path / "docs.jsonl")
    with gzip.open(SEARCH_DOCUMENTS, "rt", encoding="utf-8") as f:
        shipped = [json.loads(line) for line in f]
    assert [json.loads(line) for line in out.read_text().splitlines()] == shipped


def test_a_users_own_catalogue_files_load_the_same_way(tmp_path, monkeypatch):
    import gzip
    import json

    from sdar_envs.webshop.catalog import ATTRIBUTES, PRODUCTS

    with gzip.open(PRODUCTS, "rt", encoding="utf-8") as f:
        products = json.load(f)[:200]
    (tmp_path / "items_shuffle.json").write_text(json.dumps(products))
    with gzip.open(ATTRIBUTES, "rt", encoding="utf-8") as f:
        (tmp_path / "items_ins_v2.json").write_text(f.read())
    monkeypatch.setenv("SDAR_WEBSHOP_PRODUCTS", str(tmp_path / "items_shuffle.json"))
    monkeypatch.setenv("SDAR_WEBSHOP_ATTRIBUTES", str(tmp_path / "items_ins_v2.json"))
    monkeypatch.setenv("SDAR_WEBSHOP_HUMAN", "")
    small = load_catalog()
    assert len(small.products) == 200 and small.human_goals == []
    assert {g.asin for g in small.synthetic_goals} <= {p["asin"] for p in products}
    monkeypatch.setenv("SDAR_WEBSHOP_PRODUCTS", str(tmp_path / "missing.json"))
    import pytest

    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_catalog()
