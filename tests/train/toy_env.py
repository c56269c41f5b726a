"""A one-turn toy task for learning tests: the reward is 1 when the reply contains the letter "y".

An untrained tiny model does it about a quarter of the time, so GRPO has signal from the first step;
it is registered as ``Test/LetterY-v0`` by the tests that use it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sdar_envs.core import ActResult, PromptBuilder, TextEnv

PROMPT = PromptBuilder(history_length=0, first_template="{task}\n", template="{task}\n{observation}\n")


class LetterEnv(TextEnv):
    prompt_builder: ClassVar[PromptBuilder] = PROMPT

    def __init__(self, letter: str = "y", tasks: int = 4, max_steps: int = 1) -> None:
        super().__init__(max_steps=max_steps)
        self.letter = letter
        self._ids = [f"letter-{i}" for i in range(tasks)]

    def task_ids(self) -> list[str]:
        return list(self._ids)

    def _start(self, index: int) -> tuple[str, dict[str, Any]]:
        task = f"Reply with a word that has the letter {self.letter}."
        return "", {
            "task_id": self._ids[index],
            "task": task,
            "task_type": "letter",
            "admissible_actions": None,
            "won": False,
        }

    def _act(self, action: str) -> ActResult:
        won = self.letter in action.lower()
        return ActResult("done", float(won), True, True, {"won": won})


class FlakyLetterEnv(LetterEnv):
    """LetterEnv whose environments fail on purpose, for the failure-handling tests: a step of task
    ``letter-<raise_on>`` raises, and one of ``letter-<die_on>`` kills its worker process outright
    (``os._exit``, as an OOM kill would). Registered as ``Test/FlakyLetter-v0`` by those tests."""

    def __init__(
        self, raise_on: int | None = None, die_on: int | None = None, tasks: int = 4, max_steps: int = 1
    ) -> None:
        super().__init__(tasks=tasks, max_steps=max_steps)
        self.raise_on, self.die_on = raise_on, die_on
        self._task = ""

    def _start(self, index: int) -> tuple[str, dict[str, Any]]:
        self._task = self._ids[index]
        return super()._start(index)

    def _act(self, action: str) -> ActResult:
        import os

        if self.die_on is not None and self._task == f"letter-{self.die_on}":
            os._exit(137)
        if self.raise_on is not None and self._task == f"letter-{self.raise_on}":
            raise ConnectionError("the service behind this environment is down (injected)")
        return super()._act(action)
