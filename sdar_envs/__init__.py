"""sdar_envs: Gymnasium text environments for multi-turn LLM agents, with skill-memory hooks.

``import sdar_envs`` registers the environments (importing no engine until one is made)::

    import gymnasium as gym, sdar_envs
    env = gym.make("SDAR/ALFWorld-v0", split="valid_unseen")
    obs, info = env.reset(options={"task_id": info_task_id})   # or reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("<think>...</think><action>go to desk 1</action>")

Every environment follows one contract, documented in :mod:`sdar_envs.core`: Text spaces, task
pinning through ``options["task_id"]``, raw LLM output accepted by ``step`` (malformed text is a no-op
with ``info["valid_action"] = False``), the shared info keys :data:`~sdar_envs.core.INFO_KEYS`, and a
prompt builder per environment (:func:`prompt_builder`) with an optional privileged ``skills`` block.

Registered:
  ``SDAR/ALFWorld-v0``  kwargs: split (train | valid_seen | valid_unseen | valid_train), task_types,
                        max_steps (50), data_dir, expert (None | "walkthrough" | "handcoded")
  ``SDAR/SearchQA-v0``  kwargs: datasets (nq, hotpotqa, musique), split (train | test | all),
                        max_steps (4), topk (3), retrieval_url (or $SDAR_RETRIEVAL_URL), index_dir
  ``SDAR/WebShop-v0``   kwargs: goals (synthetic | human), split (train | test | all), max_steps (15),
                        observation_mode (text | text_rich), colour, webshop_url (or $SDAR_WEBSHOP_URL),
                        expert (target | shopper)
"""

from __future__ import annotations

import importlib

import gymnasium as gym

from sdar_envs.core import INFO_KEYS, PromptBuilder, StepInfo, TextEnv, Turn, extract_tag
from sdar_envs.env_pool import EnvFailure, EnvPool, EnvPoolError
from sdar_envs.wrappers import EpisodeSkills, SkillHook, env_name

__all__ = [
    "ENV_IDS",
    "INFO_KEYS",
    "EnvPool",
    "EnvFailure",
    "EnvPoolError",
    "EpisodeSkills",
    "PromptBuilder",
    "SkillHook",
    "StepInfo",
    "TextEnv",
    "Turn",
    "env_class",
    "env_name",
    "extract_tag",
    "prompt_builder",
    "reference_training",
    "response_tokens",
]

ENV_IDS = {
    "SDAR/ALFWorld-v0": "sdar_envs.alfworld.env:AlfworldEnv",
    "SDAR/SearchQA-v0": "sdar_envs.searchqa.env:SearchQAEnv",
    "SDAR/WebShop-v0": "sdar_envs.webshop.env:WebShopEnv",
}

for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in gym.registry:
        # The step limit lives in the environment (it shows in prompts and info["step"]), not in a
        # TimeLimit wrapper.
        gym.register(_env_id, entry_point=_entry_point)


def env_class(env_id: str) -> type[TextEnv]:
    """The class of a registered environment, without creating the environment."""
    entry = gym.spec(env_id).entry_point
    if not isinstance(entry, str):
        return entry  # type: ignore[return-value]
    module, _, attr = entry.partition(":")
    cls: type[TextEnv] = getattr(importlib.import_module(module), attr)
    return cls


def prompt_builder(env_id: str) -> PromptBuilder:
    """The prompt builder of a registered environment, without creating the environment."""
    return env_class(env_id).prompt_builder


def response_tokens(env_id: str) -> int:
    """Tokens a reply needs in this environment (its actions plus a short thought; 512, the SDAR paper's
    value, for environments that do not say)."""
    return int(getattr(env_class(env_id), "response_tokens", TextEnv.response_tokens))


def reference_training(env_id: str) -> dict[str, float]:
    """The SDAR reference's training signal for an environment: ``reward_scale`` (training reward =
    scale x won), ``invalid_penalty``, ``eval_temperature`` (0: greedy); neutral values for other envs."""
    return dict(getattr(env_class(env_id), "reference_training", TextEnv.reference_training))
