"""An ALFWorld expert that knows only what the agent is shown, so a policy can imitate it.

The games' walkthroughs go straight to wherever the object lies, which the agent cannot know: a 135M
model cloned from them learns to guess a receptacle, then puts the object back where it took it and takes
it again until the step limit (docs/real_model/, "The ALFWorld warm start"). This searcher acts on what the
step-wise prompt shows (the task, the last two turns, the current observation, the admissible actions):

1. holding nothing: ``take`` the task's object when the admissible actions offer it (never from the
   target of a two-object task, where the first one already lies); else ``open`` a closed receptacle
   it stands at; else ``go to`` the next receptacle after the current one in the admissible order
   (the prompt's only memory is where it stands, so the sweep is a fixed cycle);
2. holding the object: for clean/heat/cool, ``go to`` the sink basin / microwave / fridge and use it,
   unless the last two turns show it done; for look, ``use`` a desk lamp or floor lamp when offered,
   else keep searching; then ``go to`` the target, ``open`` it if closed, and ``move`` the object there.

Measured on the official games (50-step limit): it wins 134 of 134 ``valid_unseen`` games (16.2 steps
on average), 124 of 140 ``valid_seen`` and 326 of 355 train games (every tenth). ``SDAR/ALFWorld-v0``
with ``expert="searcher"`` gives its command as ``info["expert_action"]``; the miniature's demonstrator
(:mod:`sdar_train.miniature.alfworld_demonstrator`) reads the same view off the prompt text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["AlfworldGoal", "AlfworldView", "explained_reply", "parse_goal", "searcher_action"]

_TOOLS = {"clean": ("sinkbasin", "clean"), "heat": ("microwave", "heat"), "cool": ("fridge", "cool")}
_DONE = {"clean": "You clean the", "heat": "You heat the", "cool": "You cool the"}
_GOALS = [  # alfworld's task templates: (pattern, kind)
    (r"look at (?:a |an |some |the )?(\w+) under the (\w+)", "look"),
    (r"examine the (\w+) with the (\w+)", "look"),
    (r"(?:put|find) two (\w+) (?:in|on|and put them in|and put them on) (\w+)", "two"),
    (r"put (?:a |an |some )?(clean|hot|cool) (\w+) (?:in|on) (\w+)", "treated"),
    (r"(clean|heat|cool) (?:a |an |some )?(\w+) and put it (?:in|on) (\w+)", "treated"),
    (r"put (?:a |an |some )?(\w+) (?:in|on) (\w+)", "pick"),
]


@dataclass(frozen=True)
class AlfworldGoal:
    """What the task asks: ``kind`` (pick, two, clean, heat, cool, look), the object class, the target
    receptacle class (look: the lamp class)."""

    kind: str
    obj: str
    target: str


@dataclass(frozen=True)
class AlfworldView:
    """What a step-wise ALFWorld prompt shows."""

    task: str
    observations: list[str]  # the last turns' observations, oldest first, then the current one
    actions: list[str]  # the last turns' actions (without tags), oldest first
    admissible: list[str]


def parse_goal(task: str) -> AlfworldGoal:
    """The goal of an ALFWorld instruction; raises ValueError for text no template matches."""
    text = task.strip().lower().rstrip(".")
    for pattern, kind in _GOALS:
        m = re.fullmatch(pattern, text)
        if not m:
            continue
        if kind == "treated":
            verb, obj, target = m.groups()
            return AlfworldGoal({"hot": "heat"}.get(verb, verb), obj, target)
        return AlfworldGoal(kind, *m.groups())
    raise ValueError(f"not an ALFWorld task: {task!r}")


def _first(admissible: list[str], prefix: str) -> str | None:
    return next((a for a in admissible if a.startswith(prefix)), None)


def _held(view: AlfworldView, obj: str) -> str | None:
    """The instance of ``obj`` in hand (``apple 1``), read off the ``move X to`` commands offered."""
    for a in view.admissible:
        m = re.fullmatch(rf"move ({obj} \d+) to .+", a)
        if m:
            return m.group(1)
    for a in view.actions[-1:]:  # just taken: at a receptacle every move is offered, but be explicit
        m = re.fullmatch(rf"take ({obj} \d+) from .+", a)
        if m:
            return m.group(1)
    return None


def _location(view: AlfworldView) -> str | None:
    """Where the agent stands: the receptacle its last ``go to``/``open``/``take``/``clean``... named."""
    for a in reversed(view.actions):
        m = re.fullmatch(r"(?:go to|open|close) (.+)|(?:take|move|clean|heat|cool) .+ (?:from|to|with) (.+)", a)
        if m:
            return m.group(1) or m.group(2)
    return None


def _explore(view: AlfworldView, avoid: str | None = None) -> str:
    """Open what is closed here, else go to the next receptacle after the current one (a fixed cycle)."""
    here = _location(view)
    if here and f"open {here}" in view.admissible and "is closed" in view.observations[-1]:
        return f"open {here}"
    goes = [a for a in view.admissible if a.startswith("go to ")]
    if avoid:
        goes = [a for a in goes if not a.startswith(f"go to {avoid} ")] or goes
    if not goes:
        return "look"
    places = sorted(goes + ([f"go to {here}"] if here else []))  # the current place is not offered
    if here:
        i = places.index(f"go to {here}")
        ahead = places[i + 1 :] + places[:i]
        return next((p for p in ahead if p in goes), goes[0])
    return goes[0]


def searcher_action(view: AlfworldView) -> str:
    """The next command for the situation ``view`` shows."""
    goal = parse_goal(view.task)
    here = _location(view)
    held = _held(view, goal.obj)
    recent = " ".join(view.observations[-3:])
    if held is None:
        for a in view.admissible:
            m = re.fullmatch(rf"take {goal.obj} \d+ from (.+)", a)
            if m and not (goal.kind == "two" and m.group(1).split()[0] == goal.target):
                return a
        return _explore(view, avoid=goal.target if goal.kind == "two" else None)
    if goal.kind == "look":
        lamp = _first(view.admissible, f"use {goal.target}")
        return lamp or _explore(view)
    if goal.kind in _TOOLS:
        tool, verb = _TOOLS[goal.kind]
        treated = _DONE[goal.kind] in recent
        just_took = bool(view.actions) and view.actions[-1].startswith("take ")
        at_target = here is not None and here.split()[0] == goal.target
        if not treated and (just_took or not at_target):
            use = _first(view.admissible, f"{verb} {held} with {tool}")
            if use:
                return use
            if here and here.split()[0] == tool and f"open {here}" in view.admissible and goal.kind != "heat":
                return f"open {here}"
            return _first(view.admissible, f"go to {tool} ") or _explore(view)
    put = next((a for a in view.admissible if re.fullmatch(rf"move {held} to {goal.target} \d+", a)), None)
    if put:
        return put
    if here and here.split()[0] == goal.target and f"open {here}" in view.admissible:
        return f"open {here}"
    return _first(view.admissible, f"go to {goal.target} ") or _explore(view)


def explained_reply(view: AlfworldView) -> str:
    """The searcher's command as a tagged reply whose ``<think>`` first says what the command is decided
    on: the task's object, and whether it is in hand, in sight or not here (the searcher clone without it
    swept the room but did not take the task's object when it saw it, docs/real_model/). At most 30 tokens."""
    action = searcher_action(view)
    goal = parse_goal(view.task)
    held = _held(view, goal.obj)
    if held is None:
        need = f"I need {'an' if goal.obj[0] in 'aeiou' else 'a'} {goal.obj}."
        if action.startswith("take "):
            thought = f"{need} I see {action[len('take ') :].split(' from ')[0]} here."
        elif action.startswith("open "):
            thought = f"{need} The {action[len('open ') :]} is closed."
        else:
            thought = f"{need} There is none here."
    elif goal.kind == "look":
        thought = f"I have the {held}. I need the {goal.target}."
    elif goal.kind in _TOOLS and not action.startswith("move ") and goal.target not in action:
        thought = f"I have the {held}. I {goal.kind} it with the {_TOOLS[goal.kind][0]}."
    else:
        thought = f"I have the {held}. It goes in the {goal.target}."
    return f"<think>{thought}</think><action>{action}</action>"
