"""Growing the memory: a successful trajectory becomes a candidate skill, added unless it is a
near-duplicate of one already there.

The default summariser is rule-based and environment-aware: it keeps the actions that changed the
world (and the "go to" that led to each), replaces concrete objects by placeholders by their role, and
writes them as a numbered procedure. Pass your own ``summarize`` (e.g. an LLM call) to
:func:`grow_from_trajectory` to replace it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz

from skills.base import Skill
from skills.library import SkillLibrary

__all__ = ["Summarizer", "Trajectory", "grow_from_trajectory", "procedure_from_trajectory"]


@dataclass(frozen=True)
class Trajectory:
    """A finished episode: the environment actions taken (already projected from the LLM's text)."""

    env: str
    task: str
    task_type: str
    actions: Sequence[str]
    success: bool
    task_id: str = ""


Summarizer = Callable[[Trajectory], "Skill | None"]


def grow_from_trajectory(
    library: SkillLibrary,
    trajectory: Trajectory,
    *,
    summarize: Summarizer | None = None,
    max_similarity: float = 90.0,
) -> Skill | None:
    """Turn a successful trajectory into a skill and add it to ``library``.

    Returns the added skill, or None when the episode failed, the summariser had nothing to say, or
    the new text is a near-duplicate (rapidfuzz ``token_set_ratio`` >= ``max_similarity``) of a skill
    of the same environment and task type.
    """
    if not trajectory.success:
        return None
    skill = (summarize or procedure_from_trajectory)(trajectory)
    if skill is None:
        return None
    for other in library.skills(skill.env):
        same_scope = set(other.task_types) == set(skill.task_types)
        if same_scope and fuzz.token_set_ratio(skill.text, other.text) >= max_similarity:
            return None
    if skill.id in library:
        return None
    library.add(skill)
    return skill


def procedure_from_trajectory(trajectory: Trajectory) -> Skill | None:
    """The default rule-based summariser (ALFWorld, WebShop and Search-QA action grammars)."""
    abstract = {"alfworld": _alfworld_steps, "webshop": _webshop_steps, "searchqa": _searchqa_steps}
    steps, task = abstract.get(trajectory.env, _generic_steps)(trajectory)
    if not steps:
        return None
    # The title carries the abstracted task (what the embedding tier matches on); the text is the
    # procedure alone, which is also what the near-duplicate check compares.
    text = " ".join(f"{i}. {s}." for i, s in enumerate(steps, 1))
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return Skill(
        id=f"{trajectory.env}/learned/{trajectory.task_type or 'any'}-{digest}",
        title=f"Learned procedure for tasks like: {task}",
        text=text,
        env=trajectory.env,
        task_types=(trajectory.task_type,) if trajectory.task_type else (),
    )


# ALFWorld ------------------------------------------------------------------------------------------
_ENTITY = r"([a-z]+(?: [a-z]+)*?) (\d+)"
_ALF_PATTERNS = [
    ("take", re.compile(rf"^take {_ENTITY} from {_ENTITY}$")),
    ("move", re.compile(rf"^(?:move|put) {_ENTITY} (?:to|in/on|in|on) {_ENTITY}$")),
    ("apply", re.compile(rf"^(clean|heat|cool) {_ENTITY} with {_ENTITY}$")),
    ("use", re.compile(rf"^use {_ENTITY}$")),
    ("open", re.compile(rf"^open {_ENTITY}$")),
    ("goto", re.compile(rf"^go to {_ENTITY}$")),
]


def _alfworld_steps(traj: Trajectory) -> tuple[list[str], str]:
    names: dict[str, str] = {}  # object or receptacle type -> placeholder or kept name

    def name(kind: str, role: str) -> str:
        if kind not in names:
            taken = set(names.values())
            label, n = f"{{{role}}}", 2
            while label in taken:
                label, n = f"{{{role}_{n}}}", n + 1
            names[kind] = label
        return names[kind]

    parsed = []
    for raw in traj.actions:
        action = " ".join(raw.lower().split())
        for verb, pattern in _ALF_PATTERNS:
            m = pattern.match(action)
            if m:
                parsed.append((verb, m.groups()))
                break
    steps: list[str] = []
    location: str | None = None  # the receptacle type we went to and have not acted at yet
    opened: str | None = None
    for verb, g in parsed:
        if verb == "goto":
            location, opened = g[0], None
            continue
        if verb == "open":
            opened = g[0]  # only worth keeping if we then act on what it holds
            continue
        if verb in ("apply", "use"):  # appliances and lamps keep their names: they are the skill
            appliance = g[3] if verb == "apply" else g[0]
            names.setdefault(appliance, f"{appliance} 1")
        if location is not None:  # the "go to" that led here mattered; wandering before it did not
            where = name(location, {"take": "source", "move": "target"}.get(verb, "receptacle"))
            steps.append(f"go to {where}")
            if opened == location:
                steps.append(f"open {where}")
        if verb == "take":
            step = f"take {name(g[0], 'object')} from {name(g[2], 'source')}"
        elif verb == "move":
            step = f"move {name(g[0], 'object')} to {name(g[2], 'target')}"
        elif verb == "apply":
            step = f"{g[0]} {name(g[1], 'object')} with {g[3]} 1"
        else:  # use a lamp
            step = f"use {g[0]} 1"
        steps.append(step)
        location, opened = None, None
    task = traj.task
    for kind, label in sorted(names.items(), key=lambda kv: -len(kv[0])):
        if label.startswith("{"):
            task = re.sub(rf"\b{re.escape(kind)}\b", label, task)
    return steps, task


# WebShop -------------------------------------------------------------------------------------------
_WEBSHOP_BUTTONS = {"buy now", "next >", "< prev", "back to search", "description", "features", "reviews", "attributes"}


def _webshop_steps(traj: Trajectory) -> tuple[list[str], str]:
    steps: list[str] = []
    for raw in traj.actions:
        m = re.match(r"^\s*(search|click)\[(.*)\]\s*$", raw, flags=re.IGNORECASE | re.DOTALL)
        if not m:
            continue
        verb, arg = m.group(1).lower(), m.group(2).strip().lower()
        if verb == "search":
            steps.append("search[{query: product type + key attributes}]")
        elif arg in _WEBSHOP_BUTTONS:
            steps.append(f"click[{arg}]")
        elif re.fullmatch(r"b[0-9a-z]{9}", arg):
            steps.append("click[{matching product asin}]")
        else:
            steps.append("click[{option the instruction names}]")
    return _dedupe_runs(steps), traj.task


# Search-QA -----------------------------------------------------------------------------------------
def _searchqa_steps(traj: Trajectory) -> tuple[list[str], str]:
    steps: list[str] = []
    hop = 0
    for raw in traj.actions:
        for tag, _body in re.findall(r"<(search|answer)>(.*?)</\1>", raw, flags=re.DOTALL | re.IGNORECASE):
            if tag.lower() == "search":
                hop += 1
                steps.append(f"<search>{{hop {hop} entity + relation}}</search>")
            else:
                steps.append("<answer>{shortest span from the passages}</answer>")
    return steps, traj.task


def _generic_steps(traj: Trajectory) -> tuple[list[str], str]:
    return _dedupe_runs([re.sub(r"\d+", "{n}", " ".join(a.split())) for a in traj.actions if a.strip()]), traj.task


def _dedupe_runs(steps: list[str]) -> list[str]:
    return [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]]
