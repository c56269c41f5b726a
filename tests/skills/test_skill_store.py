"""Skill files: round trips, clear errors for broken files, and atomic writes under crashes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from skills import Skill, SkillFileError, SkillLibrary, SkillQuery, SkillStats, load_skills, save_skills, seed_bank_path
from skills import store as store_module

GOOD = textwrap.dedent(
    """\
    env: alfworld
    skills:
      - id: a
        title: First
        text: Do the first thing.
      - id: b
        text: Do the second thing.
        task_types: [heat]
        stats: {retrieved: 3, episodes: 2, successes: 1}
    """
)


def test_round_trip_keeps_skills_order_and_stats(tmp_path):
    lib = SkillLibrary.from_seed_banks(tier="ucb")
    query = SkillQuery("alfworld", "t", "put a hot apple in fridge.", "heat")
    shown = [s.id for s in lib.retrieve(query, k=2)]
    lib.record_outcome(query, shown, success=True, reward=1.0)
    path = lib.save(tmp_path / "memory.yaml")
    again = SkillLibrary.load(path, tier="ucb")
    assert [s.id for s in again.skills()] == [s.id for s in lib.skills()]
    assert again.skills() == lib.skills()
    assert {k: vars(v) for k, v in again.stats.items()} == {k: vars(v) for k, v in lib.stats.items()}
    assert again.stats[shown[0]].episodes == 1 and again.stats[shown[0]].successes == 1
    assert again.path == path  # a memory loaded from one file saves back to it


def test_hand_written_file_with_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    (a, sa), (b, sb) = load_skills(path)
    assert a == Skill("a", "First", "Do the first thing.", "alfworld")
    assert b.title == "b" and b.task_types == ("heat",) and sb == SkillStats(3, 2, 1)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (GOOD.replace("title: First", "title: [unclosed"), 5, "invalid YAML"),
        (GOOD.replace("    text: Do the second thing.\n", ""), 6, "'text' must be a non-empty string"),
        (GOOD.replace("task_types: [heat]", "task_type: [heat]"), 6, "unknown key 'task_type'"),
        (GOOD.replace("id: b", "id: a"), 6, "duplicate skill id 'a' (first at line 3)"),
        (GOOD.replace("successes: 1", "successes: 5"), 6, "successes (5) > stats.episodes (2)"),
        (GOOD.replace("episodes: 2", "episodes: -2"), 6, "non-negative integers"),
        (GOOD.replace("task_types: [heat]", "task_types: heat"), 6, "'task_types' must be a list of strings"),
        (GOOD.replace("env: alfworld\n", ""), 2, "no 'env'"),
        (GOOD.replace("skills:", "skillz:"), 2, "unknown top-level key 'skillz'"),
        ("- just\n- a list\n", 1, "expected a mapping"),
        ("", 1, "empty file"),
        ("env: alfworld\nskills:\n  - plain string\n", 3, "must be a mapping"),
    ],
)
def test_broken_files_name_the_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(SkillFileError) as err:
        SkillLibrary.load(path)
    assert str(err.value).startswith(f"{path}:{line}: "), str(err.value)
    assert message in str(err.value)


def test_missing_and_binary_files_are_errors_not_empty_memories(tmp_path):
    with pytest.raises(SkillFileError, match="no such skill file"):
        load_skills(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SkillFileError, match="not UTF-8"):
        load_skills(tmp_path / "bin.yaml")


def test_a_crash_before_the_rename_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "memory.yaml"
    old = load_skills(seed_bank_path("alfworld"))
    save_skills(path, old)
    before = path.read_bytes()

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("simulated crash between write and rename")

    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_skills(path, old[:1])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [], "no temp file is left behind"
    assert load_skills(path) == old


_WRITER = """
import sys
from skills import SkillStats, load_skills, save_skills, seed_bank_path
skills = [s for s, _ in load_skills(seed_bank_path("webshop"))]
path, i = sys.argv[1], 0
print("ready", flush=True)
while True:  # every version is whole and self-consistent: all stats equal the version number
    i += 1
    save_skills(path, [(s, SkillStats(i, i, i)) for s in skills[: 1 + i % len(skills)]])
"""


def test_killed_writer_never_leaves_a_torn_file(tmp_path):
    """SIGKILL a process that rewrites the file in a loop; every kill leaves a whole, consistent file."""
    path = tmp_path / "memory.yaml"
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3 + 0.07 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        items = load_skills(path)
        assert items, "the file is never empty"
        versions = {(st.retrieved, st.episodes, st.successes) for _, st in items}
        assert len(versions) == 1, "a file never mixes two versions"
        ((v, _, _),) = versions
        assert len(items) == 1 + v % 7


def _reader(path: str, stop_at: float, out: mp.Queue) -> None:
    reads = errors = 0
    while time.time() < stop_at:
        try:
            items = load_skills(path)
            assert len({st.episodes for _, st in items}) == 1
            reads += 1
        except Exception as e:
            errors += 1
            out.put(repr(e))
    out.put((reads, errors))


def test_readers_never_see_a_partial_file_while_a_writer_saves(tmp_path):
    path = tmp_path / "memory.yaml"
    skills = [s for s, _ in load_skills(seed_bank_path("alfworld"))]
    save_skills(path, [(s, SkillStats()) for s in skills])
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    reader = ctx.Process(target=_reader, args=(str(path), time.time() + 2.5, out))
    reader.start()
    i, deadline = 0, time.time() + 2.5
    while time.time() < deadline:
        i += 1
        save_skills(path, [(s, SkillStats(0, i, 0)) for s in skills])
    reader.join(10)
    result = out.get(timeout=5)
    assert result[1] == 0 and result[0] > 0, result
    assert i > 10
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


_ADDER = """
import sys
from skills import Skill, SkillLibrary, SkillQuery
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lib = SkillLibrary.load(path)
for i in range(n):
    lib.add(Skill(f"{name}/{i}", "t", "text of a skill", "alfworld"))
    lib.record_outcome(SkillQuery("alfworld", "t", "x", "pick"), ["shared/0"], success=True, reward=1.0)
    lib.save()
"""


@pytest.mark.slow
def test_concurrent_writers_lose_no_record(tmp_path):
    """Two processes each load the file once, then add a skill and record an outcome 40 times, saving
    after each: every skill of both is in the file and the shared skill's counts add up."""
    path = tmp_path / "memory.yaml"
    save_skills(path, [(Skill("shared/0", "t", "the shared skill", "alfworld"), SkillStats())])
    procs = [subprocess.Popen([sys.executable, "-c", _ADDER, str(path), name, "40"]) for name in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    items = dict((s.id, st) for s, st in load_skills(path))
    assert {f"{n}/{i}" for n in "ab" for i in range(40)} <= set(items)
    assert items["shared/0"].episodes == 80 and items["shared/0"].successes == 80


@pytest.mark.slow
def test_parallel_cli_adds_lose_nothing(tmp_path):
    path = tmp_path / "bank.yaml"
    cmds = [
        [
            sys.executable,
            "-m",
            "skills",
            "add",
            "--file",
            str(path),
            "--env",
            "alfworld",
            "--id",
            f"cli/{w}/{i}",
            "--text",
            "do it",
        ]
        for w in range(4)
        for i in range(5)
    ]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in cmds[:10]]
    assert [p.wait(timeout=300) for p in procs] == [0] * 10
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in cmds[10:]]
    assert [p.wait(timeout=300) for p in procs] == [0] * 10
    ids = {s.id for s, _ in load_skills(path)}
    assert {f"cli/{w}/{i}" for w in range(4) for i in range(5)} <= ids


def test_saving_keeps_the_files_mode_and_a_removed_skill_stays_removed(tmp_path):
    path = tmp_path / "memory.yaml"
    save_skills(path, [(Skill(f"s/{i}", "t", "text", "alfworld"), SkillStats()) for i in range(3)])
    os.chmod(path, 0o640)
    lib = SkillLibrary.load(path)
    lib.remove("s/1")
    lib.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [s.id for s, _ in load_skills(path)] == ["s/0", "s/2"]
    lib.record_outcome(SkillQuery("alfworld", "t", "x", "pick"), ["s/0"], success=False, reward=0.0)
    lib.save()
    lib.save()  # saving twice counts once
    assert dict((s.id, st.episodes) for s, st in load_skills(path)) == {"s/0": 1, "s/2": 0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1: x\n", ":1: unknown top-level key '1'"),
        ("? [a, b]\n: x\n", ":1: invalid YAML: found unhashable key"),
        ("skills: " + "[" * 10000 + "]" * 10000 + "\n", ": invalid YAML: nested too deeply"),
        ("skills:\n  - {[a]: b}\n", ":2: invalid YAML: found unhashable key"),
    ],
)
def test_hostile_skill_files_give_file_and_line(tmp_path, text, message):
    path = tmp_path / "bank.yaml"
    path.write_text(text)
    with pytest.raises(SkillFileError) as e:
        load_skills(path)
    assert str(e.value) == f"{path}{message}"


def test_a_cut_off_memory_file_is_refused_not_loaded_short(tmp_path):
    path = tmp_path / "memory.yaml"
    skills = [s for s, _ in load_skills(seed_bank_path("alfworld"))]
    save_skills(path, [(s, SkillStats()) for s in skills])
    whole = path.read_text()
    assert len(load_skills(path)) == len(skills)
    for cut in (len(whole) // 3, len(whole) - 40, len(whole) - 5):  # mid-skill, inside the last text, the end marker
        path.write_text(whole[:cut])
        with pytest.raises(SkillFileError, match="truncated"):
            load_skills(path)
