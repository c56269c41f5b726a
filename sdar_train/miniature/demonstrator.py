"""A WebShop demonstrator that acts on the policy's own prompt text only, so a student can imitate it:
the environment's instruction-only expert (``sdar_envs.webshop.shopper``, ``expert="shopper"``) driven
by what the prompt shows (the instruction, the admissible actions, the last action), so that it also
works on prompts with a skill block or from another environment's rollout.

WebShop's default ``info["expert_action"]`` follows the target path: it searches the target product's
exact title, which the instruction never shows, so a policy cloned from it learns to invent titles.
``careful=False`` is the careless variant that buys without choosing options (with ``vague_search``,
after searching the product without its attributes): the habit the miniature's skills correct (see
``docs/REPLICATION.md``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sdar_envs.webshop.shopper import NOT_OPTIONS, shopper_action

__all__ = ["PromptView", "habit_counts", "play", "play_prompts", "prompt_parts", "read_prompt", "webshop_action"]

_PRODUCT_LIKE = re.compile(r"b\d.*", re.S)  # an ASIN, or the garbled copies a small model writes ("b07-wine red")


@dataclass(frozen=True)
class PromptView:
    """What a step-wise prompt shows: the task, the current observation, the last action, the admissible actions."""

    task: str
    observation: str
    last_action: str
    admissible: list[str]


def prompt_parts(text: str) -> tuple[str, str, list[str], str]:
    """The task, the current observation, the admissible actions and the history text (everything before
    the current step) of a prompt made by :func:`sdar_envs.core.stepwise_prompt`; a skills block before
    it is ignored. Both demonstrators read their prompts through this."""
    task = text.partition("Your task is to: ")[2].partition("\n")[0].strip()
    observation = text.rpartition("current observation is: ")[2].partition("\nYour admissible actions now are:")[0]
    listed = text.rpartition("Your admissible actions now are:\n")[2].partition("\n\n")[0]
    admissible = [line.strip()[1:-1] for line in listed.splitlines() if line.strip().startswith("'")]
    return task, observation.strip(), admissible, text.partition("You are now at step")[0]


def read_prompt(text: str) -> PromptView:
    """Parse a WebShop step-wise prompt (:func:`prompt_parts`) with its last action."""
    task, observation, admissible, history = prompt_parts(text)
    actions = re.findall(r"<action>(.*?)</action>\]", history)
    return PromptView(task, observation, actions[-1].strip() if actions else "", admissible)


def webshop_action(view: PromptView, *, careful: bool = True, vague_search: bool = False) -> str:
    """The next command (without tags) for the page the prompt shows: the environment's instruction-only
    expert (:func:`sdar_envs.webshop.shopper.shopper_action`) on what the prompt shows. ``careful=False``:
    buy without choosing options; ``vague_search`` (careless episodes only): search the product without
    its attributes."""
    return shopper_action(view.task, view.admissible, view.last_action, careful=careful, vague_search=vague_search)


def play(
    env: Any, task_id: str, *, careful: bool = True, response: str = "{}"
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """One episode of a WebShop env (``SDAR/WebShop-v0``'s unwrapped env) played by the demonstrator from
    the very prompts the policy would see; returns the (prompt, action) turns and the last ``info``.
    ``response`` formats each action as the policy would emit it (e.g. with ``<think>``/``<action>`` tags)."""
    return play_prompts(
        env, task_id, lambda text: webshop_action(read_prompt(text), careful=careful), response=response
    )


def play_prompts(
    env: Any,
    task_id: str,
    act: Callable[[str], str],
    *,
    response: str = "{}",
    skills: Sequence[str] | None = None,
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """One episode of an unwrapped step-wise env, each command chosen by ``act`` from the prompt text the
    policy would see (with ``skills``: the prompt with the skill block); returns the (prompt, action) turns
    and the last ``info``. ``response`` formats each command as the policy would emit it."""
    from sdar_envs.core import Turn

    build = env.prompt_builder
    obs, info = env.reset(options={"task_id": task_id})
    history: list[Turn] = []
    turns: list[tuple[str, str]] = []
    while True:
        text = build(
            task=info["task"],
            observation=obs,
            history=history,
            admissible_actions=info["admissible_actions"],
            step=info["step"],
            skills=skills,
        )
        action = response.format(act(text))
        turns.append((text, action))
        history.append(Turn(obs, action))
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return turns, info


def habit_counts(episodes: Sequence[dict[str, Any]]) -> dict[str, int]:
    """What a WebShop policy did in evaluated episodes (``sdar_train.eval`` results, each with its
    ``actions``), counted by the habits the miniature plants:

    - ``vague_search``: episodes whose first action searches without the instruction's attributes (a
      query without " with ": the careless habit's, see :func:`sdar_envs.webshop.shopper.search_query`);
    - ``option_clicks``: clicks on a value, not on a product (``b`` and a digit: ASINs and a small model's
      garbled copies of them) nor on a navigation button; admissible or not (results do not say);
    - ``bought``: episodes ending in ``click[buy now]``;
    - ``episodes``: how many were counted."""
    from sdar_envs.core import command_text
    from sdar_envs.webshop.shop import parse_action  # read the commands as the shop reads them

    counts = {"episodes": len(episodes), "vague_search": 0, "option_clicks": 0, "bought": 0}
    for episode in episodes:
        commands = [parse_action(command_text(a)) for a in episode["actions"]]
        if commands and commands[0][0] == "search" and " with " not in commands[0][1]:
            counts["vague_search"] += 1
        for kind, target in commands:
            counts["option_clicks"] += (
                kind == "click" and target not in NOT_OPTIONS and not _PRODUCT_LIKE.fullmatch(target)
            )
        counts["bought"] += commands[-1:] == [("click", "buy now")]
    return counts
