"""The multi-turn text-environment contract every ``SDAR/*`` environment follows.

* Spaces: observations and actions are :class:`FreeText` (a ``gymnasium.spaces.Text`` that holds any
  ``str``). ``step`` accepts *any* ``str`` (the raw LLM output, unicode and all), not only strings the
  action space would sample.
* ``reset(*, seed=None, options=None) -> (observation, info)``. ``options={"task_id": ...}`` pins a
  task: environments reset with the same ``task_id`` run the very same task (a GRPO group).
  ``reset(seed=s)`` without a ``task_id`` picks a task deterministically from the seed.
* ``step(action) -> (observation, reward, terminated, truncated, info)``. The raw output is projected to
  an environment action (see :func:`extract_tag`); malformed text never raises: it is a no-op step with
  ``info["admissible"] = False`` that still counts towards the step limit. ``terminated`` on success
  or failure, ``truncated`` when the step limit is reached first. The environment's reward is its own
  (ALFWorld: 1.0 on success); invalid-action penalties are the trainer's business, read from
  ``info["format_valid"]`` (the SDAR reference's rule) or ``info["admissible"]``.
* ``info`` always carries :data:`INFO_KEYS`:

  ``task_id``            str, the pinned task (pass it back in ``options`` to replay the task)
  ``task``               str, the instruction the agent must carry out
  ``task_type``          str, the task family (ALFWorld: pick, look, clean, heat, cool, pick_two)
  ``admissible_actions`` list[str] | None, the actions the environment accepts now (None: free-form)
  ``won``                bool, whether the task is accomplished
  ``admissible``         bool, whether the last action parsed and the environment accepted it
  ``format_valid``       bool, whether the last output follows the reference's format rule
                         (:meth:`TextEnv.format_valid`; the SDAR reference penalises by this one)
  ``valid_action``       bool, the same as ``admissible`` (the name earlier versions used)
  ``step``               int, actions taken so far in this episode
  All three flags are True after reset.

* Prompts: each environment class has a :class:`PromptBuilder` (``prompt_builder(env_id)``) that turns
  the task, the last H (observation, action) turns, the current observation and the admissible actions
  into the policy's prompt. ``skills=[...]`` inserts the privileged skill block the SDAR teacher sees.
"""

from __future__ import annotations

import bisect
import copy
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypedDict

import gymnasium as gym
from gymnasium import spaces

from skills.render import SKILLS_HEADER, skills_block

__all__ = [
    "ActResult",
    "INFO_KEYS",
    "StepInfo",
    "SKILLS_HEADER",
    "FreeText",
    "TEXT_CHARSET",
    "PromptBuilder",
    "TextEnv",
    "Turn",
    "command_text",
    "evaluation_tasks",
    "extract_tag",
    "normalize_command",
    "stepwise_prompt",
    "strip_tag_blocks",
    "tag_blocks",
    "think_then_act",
    "think_action_format",
    "skills_block",
]


class StepInfo(TypedDict):
    """The ``info`` keys every ``SDAR/*`` environment returns from ``reset`` and ``step`` (each env adds
    its own, documented in its module: ALFWorld ``game_file``, WebShop ``score``, Search-QA ``em``...)."""

    task_id: str
    task: str
    task_type: str
    admissible_actions: list[str] | None
    won: bool
    admissible: bool
    format_valid: bool
    valid_action: bool
    step: int


INFO_KEYS = tuple(StepInfo.__annotations__)
_CJK = re.compile(r"[\u4e00-\u9fff]")

# Text spaces need a charset; printable ASCII covers what the engines print. Actions outside it are
# still accepted by step() (LLMs emit unicode), they just are not what action_space.sample() makes.
TEXT_CHARSET = frozenset(string.printable)
MAX_OBSERVATION_CHARS = 1 << 16
MAX_ACTION_CHARS = 1 << 12


class FreeText(spaces.Text):
    """A Text space whose members are any ``str`` within the length bounds (Wikipedia passages and LLM
    outputs are unicode); ``sample()`` still draws from ``charset``."""

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length


def tag_blocks(text: str, names: Sequence[str]) -> Iterator[tuple[int, int, int, int, str]]:
    """Complete ``<name>...</name>`` blocks, left to right, as ``re.finditer(r"<(a|b)>(.*?)</\\1>")`` with
    IGNORECASE | DOTALL finds them: (open start, open end, close start, close end, lower-cased name).

    The tags are located in one pass and paired with a bisect, so the time is linear in the text even
    for outputs such as ``"<action>" * 20000`` that make the regex quadratic."""
    pattern = re.compile(r"<(/?)(" + "|".join(map(re.escape, names)) + r")>", re.IGNORECASE)
    opens: list[tuple[int, int, str]] = []
    closes: dict[str, list[tuple[int, int]]] = {n.lower(): [] for n in names}
    for m in pattern.finditer(text):
        name = m.group(2).lower()
        if m.group(1):
            closes[name].append((m.start(), m.end()))
        else:
            opens.append((m.start(), m.end(), name))
    starts = {n: [c[0] for c in cs] for n, cs in closes.items()}
    pos = 0
    for start, end, name in opens:
        if start < pos:
            continue
        j = bisect.bisect_left(starts[name], end)
        if j < len(starts[name]):
            close_start, close_end = closes[name][j]
            yield start, end, close_start, close_end, name
            pos = close_end


def strip_tag_blocks(text: str, name: str) -> str:
    """``text`` with every complete ``<name>...</name>`` block replaced by a space."""
    out, pos = [], 0
    for start, _, _, close_end, _ in tag_blocks(text, (name,)):
        out.append(text[pos:start])
        pos = close_end
    out.append(text[pos:])
    return " ".join(out)


def extract_tag(text: str, tag: str) -> str | None:
    """The content of the *last* ``<tag>...</tag>`` in ``text``, stripped; None when there is none.

    The last one wins because models often restate the format in their reasoning before answering.
    Linear in the text (see :func:`tag_blocks`).
    """
    if not isinstance(text, str):
        return None
    last = None
    for block in tag_blocks(text, (tag,)):
        last = block
    return None if last is None else text[last[1] : last[2]].strip()


MAX_BARE_COMMAND_CHARS = 512  # an output without <action> tags is taken as a bare command up to this length


def command_text(text: str) -> str:
    """The command an output names: the last ``<action>`` block, else the whole (short) output."""
    tagged = extract_tag(text, "action")
    if tagged is not None:
        return tagged
    return text if isinstance(text, str) and len(text) <= MAX_BARE_COMMAND_CHARS else ""


def think_then_act(what: str) -> str:
    """The instruction closing the ALFWorld and WebShop prompts (the reference's format rule)."""
    return f"Think step by step inside <think> </think>, then give exactly one {what} inside <action> </action>."


def stepwise_prompt(
    intro: str, *, closing: str, first_closing: str | None = None, history_length: int = 2
) -> PromptBuilder:
    """verl-agent's step-wise prompt: ``intro`` and the task, the last H turns, the current observation and
    the admissible actions, then ``closing`` (``first_closing`` on the first step, when given)."""
    head = intro + " Your task is to: {task}\n"
    actions = "Your admissible actions now are:\n{admissible_actions}\n\n"
    return PromptBuilder(
        history_length=history_length,
        first_template=head + "Your current observation is: {observation}\n" + actions + (first_closing or closing),
        template=(
            head
            + "You have taken {step} step(s) so far. Your last {history_length} observation(s) and action(s) were:\n"
            "{history}\nYou are now at step {current_step} and your current observation is: {observation}\n"
            + actions
            + closing
        ),
    )


def think_action_format(text: str) -> bool:
    """The SDAR reference's format rule for ALFWorld and WebShop: an ``<action>`` and an ``</action>`` tag
    (any case), a ``<think>`` and a ``</think>`` tag (as written), and no CJK ideograph (U+4E00..U+9FFF).
    Whether the command is admissible does not enter: a well-formed but unknown command is still valid."""
    if not isinstance(text, str):
        return False
    lowered = text.lower()
    if "<action>" not in lowered or "</action>" not in lowered:
        return False
    if "<think>" not in text or "</think>" not in text:
        return False
    return _CJK.search(text) is None


def evaluation_tasks(task_ids: Sequence[str], episodes: int | None = None) -> list[str]:
    """The one rule every evaluation uses to choose its tasks: ``episodes`` tasks evenly spaced over the
    split's fixed order (so every task type shows up), or all of them when ``episodes`` is 0 or None."""
    ids = list(task_ids)
    if not episodes or episodes >= len(ids):
        return ids
    return [ids[(i * len(ids)) // episodes] for i in range(episodes)]


def normalize_command(text: str) -> str:
    """Lower-case, single spaces, no trailing full stop: how commands are compared."""
    return " ".join(text.lower().split()).rstrip(".").strip()


@dataclass(frozen=True)
class Turn:
    """One past step as the prompt shows it."""

    observation: str
    action: str


@dataclass(frozen=True)
class PromptBuilder:
    """Builds the step-wise prompt: a pure function of what the agent has seen.

    ``template`` is formatted with ``task``, ``step`` (actions taken), ``history`` (rendered turns),
    ``observation`` and ``admissible_actions``; ``first_template`` is used when there is no history.
    """

    template: str
    first_template: str
    history_length: int
    turn_format: str = "[Observation {index}: {observation}, Action {index}: {action}]"

    def __call__(
        self,
        *,
        task: str,
        observation: str,
        history: Sequence[Turn] = (),
        admissible_actions: Sequence[str] | None = None,
        step: int | None = None,
        skills: Sequence[str] | None = None,
    ) -> str:
        step = len(history) if step is None else step
        recent = list(history)[-self.history_length :] if self.history_length > 0 else []
        first_index = step - len(recent) + 1
        rendered = "\n".join(
            self.turn_format.format(index=first_index + i, observation=t.observation.strip(), action=t.action)
            for i, t in enumerate(recent)
        )
        actions = "None (free-form)" if admissible_actions is None else "\n".join(f"'{a}'" for a in admissible_actions)
        template = self.template if step > 0 else self.first_template
        prompt = template.format(
            task=task,
            step=step,
            current_step=step + 1,
            history_length=len(recent),
            history=rendered,
            observation=observation.strip(),
            admissible_actions=actions,
        )
        return (skills_block(skills) + prompt) if skills else prompt


class ActResult(NamedTuple):
    """What an environment's ``_act`` returns for one raw LLM output; ``step`` adds truncation and the
    suite's info keys."""

    observation: str
    reward: float
    terminated: bool
    admissible: bool  # the environment accepted the action (info["admissible"]); False: a counted no-op
    info: dict[str, Any]  # info keys this step updates


class TextEnv(gym.Env[str, str]):
    """Shared plumbing of the suite's environments: spaces, task choice, step counting, info keys.

    Subclasses set ``prompt_builder`` and implement ``task_ids()``, ``_start(index)`` and ``_act(action)``.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}  # an instance attribute in gymnasium.Env
    prompt_builder: ClassVar[PromptBuilder]
    # The training signal the SDAR reference uses with this environment (read by sdar_train when a
    # config leaves these fields null): training reward = reward_scale x won, the penalty of an
    # invalid turn, and the evaluation temperature (0: greedy).
    reference_training: ClassVar[dict[str, float]] = {
        "reward_scale": 1.0,
        "invalid_penalty": 0.0,
        "eval_temperature": 0.4,
    }
    # tokens a reply needs here: the longest expert reply (SmolLM2 tokens, train split) plus room for a
    # short thought; what sdar_train generates per turn unless told (the paper's configs say 512)
    response_tokens: ClassVar[int] = 512
    # keyword arguments that make the env fill info["expert_action"] for behaviour cloning (sdar_train's sft)
    demonstration_kwargs: ClassVar[dict[str, Any]] = {}
    task_label: ClassVar[str] = "task"  # how error messages name the tasks

    def __init__(self, *, max_steps: int, render_mode: str | None = None) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.max_steps = max_steps
        self.render_mode = render_mode
        self.observation_space = FreeText(max_length=MAX_OBSERVATION_CHARS, min_length=0, charset=TEXT_CHARSET)
        self.action_space = FreeText(max_length=MAX_ACTION_CHARS, min_length=0, charset=TEXT_CHARSET)
        self._step_count = 0
        self._last_obs = ""
        self._info: dict[str, Any] = {}
        self._done = False

    # --- to implement -------------------------------------------------------------------------
    @staticmethod
    def format_valid(text: str) -> bool:
        """Whether a raw output follows the format the SDAR reference rewards (``info["format_valid"]``);
        ALFWorld and WebShop use :func:`think_action_format`, Search-QA overrides it."""
        return think_action_format(text)

    @staticmethod
    def command_of(text: str) -> str:
        """The environment command a raw output names (what a skill summariser reads), "" for none."""
        return command_text(text)

    def task_ids(self) -> list[str]:
        """Every task id of this environment's task set, in its fixed order."""
        raise NotImplementedError

    def _num_tasks(self) -> int:
        return len(self._task_positions())

    def _task_index(self, task_id: str | int) -> int:
        """Index of a task id (or of an integer index, validated)."""
        positions = self._task_positions()
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            if not 0 <= task_id < len(positions):
                raise ValueError(f"task index {task_id} out of range for {len(positions)} {self.task_label} tasks")
            return task_id
        if task_id not in positions:
            raise ValueError(f"unknown {self.task_label} task_id {task_id!r} in this task set ({len(positions)} tasks)")
        return positions[task_id]

    def _task_positions(self) -> dict[str, int]:
        # the task set is fixed once the env is built
        if getattr(self, "_positions", None) is None:
            self._positions = {t: i for i, t in enumerate(self.task_ids())}
        return self._positions

    def _start(self, index: int) -> tuple[str, dict[str, Any]]:
        """Start task ``index``; return the first observation and the info keys (valid_action, step
        and won are filled in here)."""
        raise NotImplementedError

    def _act(self, action: str) -> ActResult:
        """Apply one raw LLM output (see :class:`ActResult`)."""
        raise NotImplementedError

    # --- the contract ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"task_id"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; supported: ['task_id']")
        # A reset that fails leaves the env needing a reset: never the old task's info over a new goal.
        self._info, self._done = {}, True
        if options.get("task_id") is not None:
            index = self._task_index(options["task_id"])
        else:
            index = int(self.np_random.integers(self._num_tasks()))
        obs, info = self._start(index)
        self._step_count = 0
        self._done = False
        info.update(admissible=True, format_valid=True, valid_action=True, step=0, won=bool(info.get("won", False)))
        self._last_obs, self._info = obs, info
        return obs, copy.deepcopy(info)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not self._info:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self._done:
            raise gym.error.ResetNeeded("the episode is over; call reset() before step()")
        obs, reward, terminated, valid, updates = self._act(action if isinstance(action, str) else "")  # ActResult
        self._step_count += 1
        truncated = not terminated and self._step_count >= self.max_steps
        self._done = terminated or truncated
        fmt = self.format_valid(action) if isinstance(action, str) else False
        info = {
            **self._info,
            **updates,
            "admissible": bool(valid),
            "format_valid": bool(fmt),
            "valid_action": bool(valid),
            "step": self._step_count,
        }
        self._last_obs, self._info = obs, info
        # a fresh copy each call: infos carry values over (the task, its target), and a user who keeps every
        # step's info in a buffer must not see one change when another is edited (gymnasium's checker warns)
        return obs, float(reward), bool(terminated), bool(truncated), copy.deepcopy(info)

    def render(self) -> str | None:
        """``ansi``: the last observation."""
        return self._last_obs if self.render_mode == "ansi" else None
