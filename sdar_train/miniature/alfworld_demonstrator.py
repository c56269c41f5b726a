"""The ALFWorld demonstrator of the miniature: the environment's searcher
(:mod:`sdar_envs.alfworld.searcher`, which knows only what the agent is shown) read off the policy's own
prompt text, so a student can imitate it turn by turn. It wins 134 of 134 ``valid_unseen`` games.
"""

from __future__ import annotations

import re

from sdar_envs.alfworld.searcher import AlfworldGoal, AlfworldView, parse_goal
from sdar_envs.alfworld.searcher import searcher_action as alfworld_action
from sdar_train.miniature.demonstrator import prompt_parts

__all__ = ["AlfworldGoal", "AlfworldView", "alfworld_action", "alfworld_command", "parse_goal", "read_alfworld_prompt"]


def read_alfworld_prompt(text: str) -> AlfworldView:
    """Parse a prompt made by ``SDAR/ALFWorld-v0``'s builder (:func:`sdar_train.miniature.demonstrator.prompt_parts`)
    with the observations and actions of its history window."""
    task, current, admissible, history = prompt_parts(text)
    turns = re.findall(r"\[Observation \d+: (.*?), Action \d+: .*?<action>(.*?)</action>\]", history, flags=re.S)
    return AlfworldView(
        task=task,
        observations=[o for o, _ in turns] + [current],
        actions=[a.strip() for _, a in turns],
        admissible=admissible,
    )


def alfworld_command(prompt: str) -> str:
    """The demonstrator's command for a prompt's text."""
    return alfworld_action(read_alfworld_prompt(prompt))
