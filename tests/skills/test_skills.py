"""Skill memory: seed banks, the four retrieval tiers, growing, rendering within a budget, and the CLI."""

from __future__ import annotations

import json
import re
from collections import Counter

import gymnasium as gym
import pytest

from sdar_envs.alfworld.data import TASK_TYPES, read_walkthrough
from skills import (
    SKILLS_HEADER,
    SkillLibrary,
    SkillQuery,
    Trajectory,
    fit_skills,
    grow_from_trajectory,
    load_skills,
    procedure_from_trajectory,
    seed_bank_path,
    skills_block,
)
from skills.cli import main as skills_cli

ALFWORLD_TYPES = sorted(set(TASK_TYPES.values()))
WEBSHOP_CATEGORIES = ["beauty", "electronics", "fashion", "garden", "grocery"]
SEARCHQA_SOURCES = ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"]


@pytest.fixture(scope="module")
def alfworld_instructions(valid_seen_tasks) -> dict[str, tuple[str, str]]:
    """One real instruction per task type, as the engine prints it: {type: (task_id, instruction)}."""
    env = gym.make("SDAR/ALFWorld-v0", split="valid_seen")
    out = {}
    for task_type in ALFWORLD_TYPES:
        task = next(t for t in valid_seen_tasks if t.task_type_short == task_type)
        _, info = env.reset(options={"task_id": task.task_id})
        out[task_type] = (task.task_id, info["task"])
    env.close()
    return out


def test_seed_banks_cover_every_task_type_with_general_skills_too():
    expected = {"alfworld": ALFWORLD_TYPES, "webshop": WEBSHOP_CATEGORIES, "searchqa": SEARCHQA_SOURCES}
    for env, types in expected.items():
        skills = [s for s, _ in load_skills(seed_bank_path(env))]
        assert all(s.env == env for s in skills)
        assert any(s.general for s in skills), env
        covered = {t for s in skills for t in s.task_types}
        assert covered == set(types), env
        assert len({s.id for s in skills}) == len(skills)


def test_alfworld_skills_quote_commands_the_engine_really_accepts(valid_seen_tasks):
    """Every command a skill quotes matches a command of some expert walkthrough of its task type."""
    walkthroughs: dict[str, list[str]] = {}
    for task in valid_seen_tasks:
        walkthroughs.setdefault(task.task_type_short, []).extend(read_walkthrough(task.game_file))
    everything = [c for cmds in walkthroughs.values() for c in cmds]
    checked = 0
    for skill, _ in load_skills(seed_bank_path("alfworld")):
        for quoted in re.findall(r'"([^"]+)"', skill.text):
            # placeholders stand for "<type> <n>"; concrete names must appear as the engine prints them
            pattern = re.escape(quoted).replace("<object>", r"[a-z]+ \d+").replace("<receptacle>", r"[a-z]+ \d+")
            pattern = pattern.replace("<target>", r"[a-z]+ \d+")
            pool = everything if skill.general else [c for t in skill.task_types for c in walkthroughs[t]]
            assert any(re.fullmatch(pattern, c) for c in pool), (skill.id, quoted)
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    ("env", "task_type", "task", "expected_first"),
    [
        ("alfworld", "heat", "put a hot apple in fridge.", "alfworld/heat/microwave"),
        ("alfworld", "cool", "cool some mug and put it in coffeemachine.", "alfworld/cool/fridge"),
        ("alfworld", "clean", "put a clean knife in countertop.", "alfworld/clean/sinkbasin"),
        ("alfworld", "look", "look at bowl under the desklamp.", "alfworld/look/lamp"),
        ("alfworld", "pick", "put some keychain on dresser.", "alfworld/pick/place"),
        ("alfworld", "pick_two", "find two pillow and put them in sofa.", "alfworld/pick_two/place"),
        ("webshop", "beauty", "i need a long lasting shampoo for dry hair", "webshop/beauty/attributes"),
        ("webshop", "electronics", "a usb c charger cable, 6 ft", "webshop/electronics/compat"),
        ("webshop", "garden", "blackout curtains for the living room", "webshop/garden/home"),
        ("webshop", "fashion", "women's running shoes in size 8", "webshop/fashion/size"),
        ("webshop", "grocery", "gluten free snack bars, 12 pack", "webshop/grocery/pack"),
        ("searchqa", "nq", "who wrote the song yesterday", "searchqa/attribute/lookup"),
        ("searchqa", "hotpotqa", "what is the birth year of the director of Jaws", "searchqa/multihop/decompose"),
    ],
)
def test_keyword_tier_routes_each_task_type_to_its_own_skill_first(env, task_type, task, expected_first):
    lib = SkillLibrary.from_seed_banks(tier="keyword")
    chosen = lib.retrieve(SkillQuery(env, "t", task, task_type), k=3)
    assert chosen[0].id == expected_first
    assert all(s.env == env and s.applies_to(task_type) for s in chosen)
    assert len(chosen) == 3 and len({s.id for s in chosen}) == 3


def test_keyword_tier_ranks_keyword_matched_general_skills_before_plain_ones():
    lib = SkillLibrary.from_seed_banks(tier="keyword")
    query = SkillQuery("searchqa", "t", "Which film came out first, Jaws or Alien?", "hotpotqa")
    ids = [s.id for s in lib.retrieve(query, k=3)]
    assert ids == ["searchqa/multihop/decompose", "searchqa/comparison/both", "searchqa/general/direct"]
    assert lib.stats["searchqa/comparison/both"].retrieved == 1


@pytest.fixture(scope="module")
def embedding_library() -> SkillLibrary:
    return SkillLibrary.from_seed_banks(tier="embedding")


def test_embedding_tier_ranks_by_meaning_within_the_task_type(embedding_library, alfworld_instructions):
    hits = 0
    for task_type, (task_id, task) in alfworld_instructions.items():
        chosen = embedding_library.retrieve(SkillQuery("alfworld", task_id, task, task_type), k=3)
        assert all(s.applies_to(task_type) for s in chosen)
        hits += task_type in chosen[0].task_types
    assert hits == 6, "the task type's own skill should be the closest for every type"
    # ranked by similarity, not bank order: the comparison skill (a general one) is not simply appended
    query = SkillQuery("webshop", "t", "gluten free snack bars, 12 pack, and price lower than 30.00 dollars", "grocery")
    assert [s.id for s in embedding_library.retrieve(query, k=2)] == [
        "webshop/grocery/pack",
        "webshop/general/procedure",
    ]


def test_embedding_tier_without_routing_searches_the_whole_environment(embedding_library):
    from skills.retrieval import EmbeddingRetriever

    unrouted = SkillLibrary(
        embedding_library.skills(), tier=EmbeddingRetriever(embedding_library.retriever.encode, route_by_type=False)
    )
    query = SkillQuery("alfworld", "t", "look at alarmclock under the desklamp.", "")
    chosen = unrouted.retrieve(query, k=len(unrouted.skills("alfworld")))
    assert {s.id for s in chosen} == {s.id for s in unrouted.skills("alfworld")}
    assert chosen[0].id == "alfworld/look/lamp"


def test_random_tier_is_seeded_and_stays_in_the_environment():
    query = SkillQuery("alfworld", "t", "put a hot apple in fridge.", "heat")
    draws = [
        [s.id for s in SkillLibrary.from_seed_banks(tier="random", seed=seed).retrieve(query, 3)] for seed in (7, 7, 8)
    ]
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]
    lib = SkillLibrary.from_seed_banks(tier="random", seed=1)
    seen = Counter(s.id for _ in range(200) for s in lib.retrieve(query, 3))
    assert all(sid.startswith("alfworld/") for sid in seen)
    assert len(seen) == len(lib.skills("alfworld")), "random retrieval ignores task types: every skill shows up"


def test_ucb_tier_explores_unused_skills_then_prefers_the_ones_that_pay():
    lib = SkillLibrary.from_seed_banks(["alfworld"], tier="ucb")
    query = SkillQuery("alfworld", "t", "put a hot apple in fridge.", "heat")
    applicable = [s.id for s in lib.skills("alfworld") if s.applies_to("heat")]
    assert len(applicable) == 3  # two general skills and the heat one
    first_round = []
    for _ in applicable:
        (skill,) = lib.retrieve(query, k=1)
        first_round.append(skill.id)
        lib.record_outcome(query, [skill.id], success=False, reward=0.0)
    assert sorted(first_round) == sorted(applicable), "each unused skill is tried before any repeats"
    paying = "alfworld/general/commands"
    picks = Counter()
    for _ in range(60):
        (skill,) = lib.retrieve(query, k=1)
        picks[skill.id] += 1
        lib.record_outcome(query, [skill.id], success=skill.id == paying, reward=float(skill.id == paying))
    assert picks[paying] >= 45, picks
    assert set(picks) <= set(applicable), "skills of other task types are never shown"
    assert lib.stats[paying].successes == picks[paying]


def test_fit_skills_cuts_from_the_skill_side_within_the_budget():
    skills = ["alpha beta gamma delta", "one two three four five six seven eight", "never shown"]
    count = lambda s: len(s.split())  # noqa: E731 - a whitespace "tokenizer"
    assert fit_skills(skills, 1000, count) == skills
    budget = count(skills_block(skills[:1])) + 6
    fitted = fit_skills(skills, budget, count)
    assert fitted[0] == skills[0] and fitted[1].endswith("...") and len(fitted) == 2
    assert fitted[1].startswith("one two three")
    assert count(skills_block(fitted)) <= budget
    assert fit_skills(skills, 2, count) == []
    assert skills_block(fit_skills(skills, count(skills_block(skills[:1])), count)).startswith(SKILLS_HEADER)


def test_growing_from_real_expert_episodes_adds_a_skill_once(valid_seen_tasks):
    lib = SkillLibrary.from_seed_banks(["alfworld"])
    heats = [t for t in valid_seen_tasks if t.task_type_short == "heat"][:2]
    env = gym.make("SDAR/ALFWorld-v0", split="valid_seen", expert="walkthrough")
    trajectories = []
    for task in heats:
        _, info = env.reset(options={"task_id": task.task_id})
        actions, done = [], False
        while not done:
            actions.append(info["expert_action"])
            _, _, terminated, truncated, info = env.step(f"<action>{actions[-1]}</action>")
            done = terminated or truncated
        trajectories.append(Trajectory("alfworld", info["task"], "heat", actions, info["won"], task.task_id))
    env.close()
    assert all(t.success for t in trajectories)
    before = len(lib)
    skill = grow_from_trajectory(lib, trajectories[0])
    assert skill is not None and skill.task_types == ("heat",) and len(lib) == before + 1
    assert "heat {object} with microwave 1" in skill.text
    assert not re.search(r"\b[a-z]+ [2-9]\b", skill.text), "concrete object numbers are abstracted away"
    # the second game's procedure has the same shape: a near-duplicate, not added
    assert grow_from_trajectory(lib, trajectories[1]) is None and len(lib) == before + 1
    failed = Trajectory("alfworld", "put a hot cup in cabinet.", "heat", ["go to cabinet 1"], success=False)
    assert grow_from_trajectory(lib, failed) is None
    # the summariser is pluggable (an LLM call in practice)
    custom = grow_from_trajectory(
        lib,
        trajectories[0],
        summarize=lambda t: procedure_from_trajectory(t).__class__("mine", "Mine", "Say hi first.", "alfworld"),
    )
    assert custom is not None and custom.id == "mine" and "mine" in lib


def test_cli_add_list_show_retrieve_stats(tmp_path, capsys):
    memory = tmp_path / "memory.yaml"
    assert (
        skills_cli(
            [
                "--file",
                str(memory),
                "add",
                "--id",
                "alfworld/mine",
                "--env",
                "alfworld",
                "--text",
                "Check the fridge first.",
                "--task-types",
                "cool",
                "--keywords",
                "cold,garbagecan",
            ]
        )
        == 0
    )
    seeded = len(load_skills(seed_bank_path("alfworld"))) + len(load_skills(seed_bank_path("webshop")))
    assert len(load_skills(memory)) > seeded, "a new memory file starts from the seed banks"
    capsys.readouterr()
    assert (
        skills_cli(
            [
                "--file",
                str(memory),
                "--json",
                "retrieve",
                "--env",
                "alfworld",
                "--task-type",
                "cool",
                "--task",
                "put a cold apple in garbagecan.",
                "-k",
                "2",
            ]
        )
        == 0
    )
    ids = [r["id"] for r in json.loads(capsys.readouterr().out)]
    assert ids == ["alfworld/mine", "alfworld/cool/fridge"]  # two keyword hits beat one
    assert skills_cli(["--file", str(memory), "--json", "show", "alfworld/mine"]) == 0
    assert json.loads(capsys.readouterr().out)["task_types"] == ["cool"]
    assert skills_cli(["--file", str(memory), "--json", "list", "--env", "alfworld"]) == 0
    assert "alfworld/mine" in {r["id"] for r in json.loads(capsys.readouterr().out)}
    assert skills_cli(["--file", str(memory), "stats"]) == 0
    assert "alfworld" in capsys.readouterr().out
    assert skills_cli(["--file", str(memory), "add", "--id", "alfworld/mine", "--env", "alfworld", "--text", "x"]) == 2
    assert "duplicate skill id" in capsys.readouterr().err
    assert skills_cli(["add", "--id", "x", "--env", "alfworld", "--text", "x"]) == 2
    assert "needs --file" in capsys.readouterr().err
    memory.write_text(memory.read_text().replace("  text:", "  txet:", 1))
    assert skills_cli(["--file", str(memory), "list"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(memory))}:\d+: unknown key 'txet'", err)


def test_cli_prints_bracketed_text_verbatim_and_takes_flags_after_the_subcommand(tmp_path):
    import json
    import subprocess
    import sys

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "skills", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "click[buy now]" in run("show", "webshop/general/procedure")  # not eaten as Rich markup
    assert "click[" in run("retrieve", "--env", "webshop", "--task", "buy red shoes")
    assert json.loads(run("show", "webshop/general/procedure", "--json"))["id"] == "webshop/general/procedure"
    path = tmp_path / "mine.yaml"
    run("add", "--file", str(path), "--env", "webshop", "--id", "mine/x", "--text", "then click[next >] twice")
    assert "click[next >]" in run("show", "mine/x", "--file", str(path))
