"""A KV cache for generation that grows in place instead of by concatenation.

transformers' ``DynamicLayer`` appends each new token's keys and values with ``torch.cat``, which copies
the layer's whole cache at every decode step: for SmolLM2 with 16 rows of 1,000-token prompts, 30 layers
x 2 copies of 6 MiB a step, each a fresh allocation. On a CPU with glibc's mmap threshold fixed (as the
run scripts set it to hold memory) every such block is a new mapping the kernel zeroes, and a decode
step took 2.5x as long as with the buffer below; with the default allocator they are about even
(``bench/kv_cache.py``). :class:`GrowingLayer` keeps keys and values in a buffer with room to spare and
writes each step's column into it; ``keys``/``values`` are views of the filled part, so attention reads
exactly what ``DynamicLayer`` would give it.

:func:`growing_cache` builds a ``DynamicCache`` for a model with its full-attention layers replaced by
``GrowingLayer`` (sliding-window and other layer kinds are kept as transformers builds them), or returns
None where the installed transformers has no such API (generation then uses its own cache).
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # transformers without per-layer caches: generation keeps its own
    DynamicCache = DynamicLayer = None  # type: ignore[assignment,misc]

__all__ = ["GrowingLayer", "growing_cache"]

if DynamicLayer is not None:

    class GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are views of a buffer with spare room: an update
        writes the new columns, and the buffer is copied only when it is full (it then grows by a quarter,
        at least 128 columns) or when another operation replaced ``keys`` (a batch selection, a beam
        reorder)."""

        _room: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys, values = self.keys, self.values
            assert keys is not None and values is not None
            kept = keys.shape[-2] if keys.numel() else 0
            need = kept + key_states.shape[-2]
            room = self._room
            if (
                room is None
                or need > room[0].shape[-2]
                or room[0].shape[:2] != key_states.shape[:2]
                or (kept and keys.data_ptr() != room[0].data_ptr())  # keys replaced, not a view of ours
            ):
                size = need + max(128, need // 4)
                room = (
                    key_states.new_empty((*key_states.shape[:-2], size, key_states.shape[-1])),
                    value_states.new_empty((*value_states.shape[:-2], size, value_states.shape[-1])),
                )
                if kept:
                    room[0][..., :kept, :] = keys
                    room[1][..., :kept, :] = values
                self._room = room
            room[0][..., kept:need, :] = key_states
            room[1][..., kept:need, :] = value_states
            self.keys, self.values = room[0][..., :need, :], room[1][..., :need, :]
            return self.keys, self.values

        def reset(self) -> None:
            self._room = None
            super().reset()

else:  # pragma: no cover - only without transformers' cache layers
    GrowingLayer = None  # type: ignore[assignment,misc]


def growing_cache(model: torch.nn.Module) -> Any | None:
    """An empty ``DynamicCache`` for ``model`` whose full-attention layers are :class:`GrowingLayer`,
    or None where transformers cannot build one from the model's config."""
    if GrowingLayer is None:
        return None
    if getattr(getattr(model, "generation_config", None), "cache_implementation", None):
        return None  # the model asks for a cache of its own kind (static, hybrid, ...): generate builds that
    config = getattr(model, "config", None)
    try:
        cache = DynamicCache(config=config)
    except (TypeError, ValueError, AttributeError):
        return None
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in layers]
    return cache
