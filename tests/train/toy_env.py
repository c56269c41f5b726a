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
