"""``SDAR/WebShop-v0``: shop for a product that fits an instruction, in a re-implemented WebShop.

Actions (the original's grammar): ``search[query]`` on the search page, ``click[x]`` where x is one of
the page's clickables (lower-cased button texts such as ``back to search``, ``next >``, ``< prev``,
``description``, ``buy now``; product ASINs; option values). The last ``<action>...</action>`` of the
raw LLM output is used (or the whole output when it has no tags). ``click[buy now]`` ends the episode
with the purchase's score in [0, 1]; ``won`` is score == 1. Anything else is an invalid no-op that
counts towards the 15-step limit.

Observation modes: ``text`` (the page's elements joined with `` [SEP] ``, as the original's text env)
and ``text_rich`` (one element per line, buttons marked ``[button] x [button_]``).

Back-ends with identical behaviour: in-process (default) or a running ``sdar-webshop`` site
(``webshop_url=`` or ``$SDAR_WEBSHOP_URL``), which renders the same pages.

Extra ``info`` keys besides the suite's (``task_type`` is the product category):
``available_actions`` {"has_search_bar", "clickables"}, ``score`` (0 until a purchase), ``reward_info``
(the score's parts after a purchase), ``purchase`` (after a purchase, what was bought: ``{"asin", "options":
{name: value}}``; None before), ``asin`` and ``target_options`` (reset only: the target and the options
a perfect agent clicks for it, ``{name: value}``), ``expert_action``: with ``expert="target"``
(the default, the original's) the target path: search the target's title, click it, click the goal's
options, buy; with ``expert="shopper"`` a careful shopper that knows only what the agent knows: search
the instruction, click the first result, click the options the instruction names, buy
(``sdar_envs.webshop.shopper``; 0.79 score and 57% exact purchases on every fifth test goal); with
``expert="checklist"`` the same shopper's whole reply, ``<think>Options to click: 'red', 'large'.</think>``
before its action on product pages.
Behaviour cloning uses the shopper (``demonstration_kwargs``): the target path searches a title the
instruction never shows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, ClassVar, Literal

from sdar_envs.core import ActResult, PromptBuilder, TextEnv, command_text, stepwise_prompt, think_then_act
from sdar_envs.webshop.catalog import TEST_GOALS, Goal
from sdar_envs.webshop.reward import target_options
from sdar_envs.webshop.shop import Page, Shop, ShopState, available_actions
from sdar_envs.webshop.shopper import checklist_reply, shopper_action

__all__ = ["WEBSHOP_PROMPT", "WebShopEnv"]

WEBSHOP_PROMPT = stepwise_prompt(
    "You are an agent shopping on the WebShop website.",
    closing=think_then_act("action"),
    first_closing=think_then_act("action")[:-1]
    + ", e.g. <action>search[red running shoes]</action> or <action>click[buy now]</action>.",
)

_SHARED_SHOPS: dict[tuple, Shop] = {}


def _shop(colour: str) -> Shop:
    # One catalogue and searcher per process, shared by every env in it (a GRPO group of 8 envs).
    key = (colour,)
    if key not in _SHARED_SHOPS:
        _SHARED_SHOPS[key] = Shop(colour=colour)  # type: ignore[arg-type]
    return _SHARED_SHOPS[key]


class WebShopEnv(TextEnv):
    """Args:
    goals: ``synthetic`` (6,910 on the 1k catalogue, what RL papers use) or ``human`` (13).
    split: ``test`` (goals[:500]), ``train`` (the rest) or ``all``.
    max_steps: 15.  observation_mode: ``text`` | ``text_rich``.
    colour: ``original`` (the published reward's colour quirk) | ``words`` (corrected).
    expert: which expert fills ``info["expert_action"]``: ``target`` (the original's target path),
        ``shopper`` (acts only on what the agent sees; what behaviour cloning uses) or ``checklist`` (the
        shopper's whole reply, its thought listing the options it has still to click).
    webshop_url: a running sdar-webshop, or several replicas (a list, or comma-separated; default
        ``$SDAR_WEBSHOP_URL``), pages spread over them; unset: in-process.
    """

    task_label: ClassVar[str] = "WebShop"
    prompt_builder: ClassVar[PromptBuilder] = WEBSHOP_PROMPT
    response_tokens: ClassVar[int] = 128  # the longest expert reply is 58 tokens (a long search or option)
    reference_training: ClassVar[dict[str, float]] = {
        "reward_scale": 10.0,
        "invalid_penalty": 0.1,
        "eval_temperature": 0.4,
    }
    # what behaviour cloning needs: an expert that acts on what the agent sees (the target path cannot be cloned)
    demonstration_kwargs: ClassVar[dict[str, Any]] = {"expert": "shopper"}

    def __init__(
        self,
        goals: Literal["synthetic", "human"] = "synthetic",
        split: Literal["train", "test", "all"] = "train",
        max_steps: int = 15,
        observation_mode: Literal["text", "text_rich"] = "text",
        colour: Literal["original", "words"] = "original",
        webshop_url: str | Sequence[str] | None = None,
        expert: Literal["target", "shopper", "checklist"] = "target",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        if expert not in ("target", "shopper", "checklist"):
            raise ValueError(f"expert must be 'target', 'shopper' or 'checklist', got {expert!r}")
        self.expert = expert
        if observation_mode not in ("text", "text_rich"):
            raise ValueError(f"observation_mode must be 'text' or 'text_rich', got {observation_mode!r}")
        if goals not in ("synthetic", "human"):
            raise ValueError(f"goals must be 'synthetic' or 'human', got {goals!r}")
        self.kind, self.split, self.mode = goals, split, observation_mode
        url = webshop_url or os.environ.get("SDAR_WEBSHOP_URL")
        if url:
            from sdar_envs.webshop.client import RemoteShop

            self.shop: Any = RemoteShop(url, colour=colour)
        else:
            self.shop = _shop(colour)
        # Task ids are positions in the full shuffled goal list (the site's fixed_<n>); the 13 human
        # goals are too few to split, so every split holds all of them.
        self.goals: list[Goal] = self.shop.catalog.goals(goals, split if goals == "synthetic" else "all")
        offset = TEST_GOALS if goals == "synthetic" and split == "train" else 0
        self._ids = [f"{goals}-{offset + i}" for i in range(len(self.goals))]
        self._goal: Goal | None = None
        self._state = ShopState()
        self._last = ""
        self._page: Page | None = None

    def task_ids(self) -> list[str]:
        return list(self._ids)

    def _observe(self) -> str:
        assert self._page is not None
        return self._page.text() if self.mode == "text" else self._page.text_rich()

    def _admissible(self) -> list[str]:
        assert self._page is not None
        actions = ["search[<your query>]"] if self._page.has_search_bar else []
        return actions + [f"click[{c}]" for c in self._page.clickables]

    def _expert(self, admissible: list[str]) -> str | None:
        goal, page, state = self._goal, self._page, self._state
        assert goal is not None and page is not None
        if self.expert in ("shopper", "checklist"):
            if state.view == "done":
                return None
            expert = shopper_action if self.expert == "shopper" else checklist_reply
            return expert(goal.instruction, admissible, self._last)
        product = self.shop.catalog.by_asin[goal.asin]
        wanted = target_options(goal, product)
        if state.view == "search":
            return f"search[{product.title.lower()}]"
        if state.view == "results":
            if goal.asin.lower() in page.clickables:
                return f"click[{goal.asin.lower()}]"
            return "click[next >]" if "next >" in page.clickables else "click[back to search]"
        if state.view == "sub":
            return "click[< prev]"
        if state.view == "item":
            if state.asin != goal.asin:
                return "click[< prev]"
            chosen = dict(state.options)
            for name, value in wanted.items():
                if chosen.get(name) != value:
                    return f"click[{value}]"
            return "click[buy now]"
        return None

    def _page_info(self) -> dict[str, Any]:
        assert self._page is not None and self._goal is not None
        reward, admissible = self._page.reward, self._admissible()
        return {
            "admissible_actions": admissible,
            "available_actions": available_actions(self._page),
            "won": bool(reward is not None and reward.score == 1.0),
            "score": 0.0 if reward is None else reward.score,
            "reward_info": None if reward is None else asdict(reward),
            "purchase": None if reward is None else {"asin": self._state.asin, "options": dict(self._state.options)},
            "expert_action": self._expert(admissible),
        }

    def _start(self, index: int) -> tuple[str, dict[str, Any]]:
        self._goal = self.goals[index]
        self._state = ShopState()
        self._last = ""  # the last valid command: the shopper's only memory
        self._page = self.shop.render(self._state, self._goal)
        info = {
            "task_id": self._ids[index],
            "task": self._goal.instruction,
            "task_type": self._goal.category,
            "asin": self._goal.asin,
            "target_options": target_options(self._goal, self.shop.catalog.by_asin[self._goal.asin]),
        }
        return self._observe(), {**info, **self._page_info()}

    def _act(self, action: str) -> ActResult:
        assert self._goal is not None
        command = command_text(action)
        state, valid = self.shop.step(self._state, self._goal, command)
        if valid:
            self._state, self._last = state, command.strip()
            self._page = self.shop.render(state, self._goal)
        info = self._page_info()
        done = self._state.view == "done"
        return ActResult(self._observe(), info["score"] if done else 0.0, done, valid, info)
