"""The KV cache generation uses (sdar_train.kv_cache): it holds exactly what transformers' own cache
holds, grows in place, and generation with it samples the same tokens."""

from __future__ import annotations

import pytest
import torch

from sdar_train.kv_cache import GrowingLayer, growing_cache
from sdar_train.policy import generate

transformers_cache = pytest.importorskip("transformers.cache_utils")


def test_a_growing_layer_holds_what_concatenation_holds_and_copies_only_when_full():
    torch.manual_seed(0)
    grown, plain = GrowingLayer(), transformers_cache.DynamicLayer()
    pointers = set()
    for width in (300, *[1] * 200):  # a prefill, then decode steps
        k, v = torch.randn(3, 2, width, 8), torch.randn(3, 2, width, 8)
        got, want = grown.update(k, v), plain.update(k, v)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        pointers.add(grown.keys.data_ptr())
    assert grown.get_seq_length() == plain.get_seq_length() == 500
    assert len(pointers) <= 3  # 300 + 128 columns, then a quarter more: two copies in 200 steps, not 200
    # a batch selection (generation's shared prefill copies a family's cache to its rows) and a crop
    for layer in (grown, plain):
        layer.batch_select_indices(torch.tensor([2, 2, 0]))
        layer.crop(-5)
    k, v = torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8)
    assert all(torch.equal(g, w) for g, w in zip(grown.update(k, v), plain.update(k, v), strict=True))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_with_the_growing_cache_samples_what_transformers_cache_samples(monkeypatch, temperature):
    from sdar_train.policy import load_policy

    policy = load_policy("tiny", torch.device("cpu"))
    assert growing_cache(policy.model) is not None and any(
        isinstance(layer, GrowingLayer) for layer in growing_cache(policy.model).layers
    )
    prompts = [[5 + i % 7 for i in range(n)] for n in (40, 25, 60, 33)] + [[9, 8, 7] * 10] * 2
    kwargs = dict(max_new_tokens=24, temperature=temperature, top_p=1.0, generator_seed=5, batch_size=8)
    grown = generate(policy, prompts, **kwargs)
    assert sum(map(len, grown)) > 4 * 24  # replies long enough that the cache grows step by step
    monkeypatch.setattr("sdar_train.policy.growing_cache", lambda model: None)  # transformers' own cache
    assert generate(policy, prompts, **kwargs) == grown
