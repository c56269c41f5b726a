"""``SDAR/ALFWorld-v0``: the official ALFWorld text games on the real alfworld/textworld engine.

Extra ``info`` keys besides the suite's (:data:`sdar_envs.core.INFO_KEYS`):

``game_file``      path of the ``game.tw-pddl`` being played
``expert_action``  with ``expert="walkthrough"``: the next command of the game's expert walkthrough
                   while the agent has followed it so far, else None; with ``expert="handcoded"``:
                   alfworld's handcoded expert's next command (slower: it needs the engine's facts);
                   with ``expert="searcher"``: the command of an expert that knows only what the agent is
                   shown (:mod:`sdar_envs.alfworld.searcher`; wins 134 of 134 ``valid_unseen`` games);
                   with ``expert="explained"``: the searcher's command as a whole reply, after a
                   ``<think>`` naming the task's object and whether it is in hand, in sight or not here.
                   Behaviour cloning uses the searcher (``demonstration_kwargs``): cloned from the
                   walkthrough, which goes straight to where the object lies, SmolLM2 learned to guess.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar, Literal

from sdar_envs.alfworld import engine
from sdar_envs.alfworld.data import TASK_TYPES, AlfworldTask, list_tasks
from sdar_envs.alfworld.searcher import AlfworldView, explained_reply, searcher_action
from sdar_envs.core import (
    ActResult,
    PromptBuilder,
    TextEnv,
    command_text,
    normalize_command,
    stepwise_prompt,
    think_then_act,
)

__all__ = ["AlfworldEnv", "ALFWORLD_PROMPT", "project_action"]

ALFWORLD_PROMPT = stepwise_prompt(
    "You are an agent in a household simulated as a text game.", closing=think_then_act("admissible action")
)

_INVALID_FEEDBACK = "Nothing happens."  # what the engine itself answers to a command it does not know


def project_action(text: str, admissible: list[str]) -> str | None:
    """The admissible command an LLM output names, or None.

    The command is the text of the last ``<action>...</action>``; with no tags, the whole output is
    taken as a bare command. Matching ignores case, repeated spaces and a trailing full stop.
    """
    wanted = normalize_command(command_text(text))
    if not wanted:
        return None
    for command in admissible:
        if normalize_command(command) == wanted:
            return command
    return None


EXPERTS = (None, "walkthrough", "handcoded", "searcher", "explained")


class AlfworldEnv(TextEnv):
    """One ALFWorld game at a time, chosen by ``task_id`` or by seed.

    Args:
        split: ``train`` (3553 games), ``valid_seen`` (140), ``valid_unseen`` (134) or ``valid_train`` (200).
        task_types: restrict to these families (alfworld names or pick/look/clean/heat/cool/pick_two).
        max_steps: step limit (50 as in verl-agent and the SDAR paper); the episode is truncated there.
        data_dir: a folder holding ``json_2.1.1/<split>`` (default: ``$ALFWORLD_DATA``, else the
            shipped archives, unpacked on first use).
        expert: None, ``"walkthrough"``, ``"handcoded"``, ``"searcher"`` or ``"explained"``; fills
            ``info["expert_action"]``.
        game_cache_size: games kept parsed and translated in this process (a re-visited game resets in
            milliseconds).
    """

    task_label: ClassVar[str] = "ALFWorld"
    prompt_builder: ClassVar[PromptBuilder] = ALFWORLD_PROMPT
    response_tokens: ClassVar[int] = 96  # the longest expert reply is 23 tokens
    reference_training: ClassVar[dict[str, float]] = {
        "reward_scale": 10.0,
        "invalid_penalty": 0.1,
        "eval_temperature": 0.4,
    }
    # what behaviour cloning needs: an expert the policy can copy from its prompt (the walkthrough knows where
    # the object lies; SmolLM2 cloned from it won 2 of 20 held-out games, docs/real_model/)
    demonstration_kwargs: ClassVar[dict[str, Any]] = {"expert": "searcher"}

    def __init__(
        self,
        split: str = "train",
        task_types: list[str] | tuple[str, ...] | None = None,
        max_steps: int = 50,
        data_dir: str | None = None,
        expert: Literal["walkthrough", "handcoded", "searcher", "explained"] | None = None,
        game_cache_size: int = 256,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        if expert not in EXPERTS:
            raise ValueError(f"expert must be one of {', '.join(map(str, EXPERTS))}, got {expert!r}")
        self.split = split
        self.expert = expert
        self.tasks: list[AlfworldTask] = list_tasks(split, task_types, data_dir)
        self._engine = engine.make_engine(
            engine.REQUEST_INFOS, engine.GameCache(game_cache_size), handcoded_expert=expert == "handcoded"
        )
        self._loaded: str | None = None
        self._task: AlfworldTask | None = None
        self._state: Any = None
        self._walkthrough: list[str] = []
        self._on_walkthrough = True
        # what the searcher sees, as the prompt shows it: the last turns' (observation, command) and the
        # current observation
        self._turns: deque[tuple[str, str]] = deque(maxlen=self.prompt_builder.history_length)
        self._observation = ""
        self._instruction = ""

    # --- TextEnv hooks ----------------------------------------------------------------------------
    def task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks]

    def _start(self, index: int) -> tuple[str, dict[str, Any]]:
        task = self.tasks[index]
        if self._loaded != task.game_file:
            self._engine.load(task.game_file)
            self._loaded = task.game_file
        self._state = self._engine.reset()
        self._task = task
        self._walkthrough = list(self._state.get("extra.walkthrough") or self._engine.walkthrough or [])
        self._on_walkthrough = True
        obs = self._state.feedback
        self._turns.clear()
        self._observation = obs
        instruction = obs.rpartition("Your task is to: ")[2].strip()
        self._instruction = instruction
        info = {
            "task_id": task.task_id,
            "task": instruction,
            "task_type": TASK_TYPES[task.task_type],
            "admissible_actions": list(self._state["admissible_commands"]),
            "won": bool(self._state["won"]),
            "game_file": task.game_file,
        }
        info["expert_action"] = self._expert_action(0)
        return obs, info

    def _act(self, action: str) -> ActResult:
        command = project_action(action, self._state["admissible_commands"])
        self._turns.append((self._observation, command or command_text(action)))
        if command is None:
            # A no-op: the engine would answer "Nothing happens." without changing anything.
            self._on_walkthrough = False
            self._observation = _INVALID_FEEDBACK
            return ActResult(
                _INVALID_FEEDBACK, 0.0, False, False, {"expert_action": self._expert_action(self._step_count + 1)}
            )
        step = self._step_count
        if self._on_walkthrough and (step >= len(self._walkthrough) or self._walkthrough[step] != command):
            self._on_walkthrough = False
        self._state, score, _ = self._engine.step(command)
        self._observation = self._state.feedback
        won = bool(self._state["won"])
        updates: dict[str, Any] = {
            "admissible_actions": list(self._state["admissible_commands"]),
            "won": won,
            "expert_action": self._expert_action(step + 1),
        }
        return ActResult(self._state.feedback, float(score), won, True, updates)

    def _expert_action(self, step: int) -> str | None:
        if self.expert == "walkthrough":
            if self._on_walkthrough and step < len(self._walkthrough):
                return self._walkthrough[step]
            return None
        if self.expert == "handcoded":
            plan = self._state.get("extra.expert_plan") or []
            return plan[0] if plan else None
        if self.expert in ("searcher", "explained"):
            view = AlfworldView(
                task=self._instruction,
                observations=[o for o, _ in self._turns] + [self._observation],
                actions=[a for _, a in self._turns],
                admissible=list(self._state["admissible_commands"]),
            )
            return searcher_action(view) if self.expert == "searcher" else explained_reply(view)
        return None

    def close(self) -> None:
        self._engine = None  # the engine holds its own copy of libdownward; let it go with us
        super().close()
