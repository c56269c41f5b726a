"""Skill files: reading them with errors that name the file and line, and writing them atomically.

A skill file is YAML::

    env: alfworld            # optional default for the entries below
    skills:
      - id: alfworld/heat/microwave
        title: Heat with the microwave
        text: Take the object, go to microwave 1 and ...
        task_types: [heat]   # optional; empty or absent = a general skill
        keywords: [hot]      # optional
        stats: {retrieved: 0, episodes: 0, successes: 0}   # optional; written by save_skills

Writes go to a temporary file in the same folder, are fsynced and then renamed over the target, so a
crash at any point leaves either the old file or the new one, never a mix, and readers (which never
lock) always see a whole file. Concurrent writers are serialised by an advisory lock on ``<file>.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from skills.base import Skill, SkillStats

__all__ = ["SEED_BANKS", "SkillFileError", "load_skills", "save_skills", "seed_bank_path"]

BANK_DIR = Path(__file__).resolve().parent / "banks"
SEED_BANKS = ("alfworld", "webshop", "searchqa")
_ENTRY_KEYS = {"id", "title", "text", "env", "task_types", "keywords", "stats"}
_STATS_KEYS = {"retrieved", "episodes", "successes"}


class SkillFileError(ValueError):
    """A skill file that cannot be read; the message starts with ``<file>:<line>:``."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")


_HEADER = "# SDAR skill memory, written by skills.save_skills; its last line marks the end. Hand edits are fine while no run is writing.\n"
_END = "# end of skill memory"  # a file that starts with _HEADER and lacks this line was cut short


def seed_bank_path(env: str) -> Path:
    """The packaged seed bank of one environment (``alfworld``, ``webshop`` or ``searchqa``)."""
    if env not in SEED_BANKS:
        raise ValueError(f"no seed bank for env {env!r}; known: {', '.join(SEED_BANKS)}")
    return BANK_DIR / f"{env}.yaml"


def load_skills(path: str | os.PathLike[str]) -> list[tuple[Skill, SkillStats]]:
    """Every skill of a file with its stats, in file order. Raises :class:`SkillFileError` on any problem,
    never returns a silently empty or partial list for a broken file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SkillFileError(path, None, "no such skill file") from None
    except UnicodeDecodeError as e:
        raise SkillFileError(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    if text.startswith(_HEADER) and not text.rstrip("\n").endswith(_END):
        raise SkillFileError(path, text.count("\n") + 1, f"truncated: a file written by save_skills ends with {_END!r}")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except RecursionError:
        raise SkillFileError(path, None, "invalid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise SkillFileError(path, mark.line + 1 if mark else None, f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SkillFileError(path, None, f"invalid YAML: {e}") from None
    if root is None:
        raise SkillFileError(path, 1, "empty file; expected a mapping with a 'skills' list")
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise SkillFileError(path, 1, "expected a mapping with a 'skills' list at the top")
    keys = {str(k.value): k for k, _ in root.value}
    nodes = {str(k.value): v for k, v in root.value}
    unknown = sorted(map(str, set(data) - {"env", "skills", "version"}))
    if unknown:
        raise SkillFileError(
            path, _line(keys[unknown[0]]) if unknown[0] in keys else 1, f"unknown top-level key {unknown[0]!r}"
        )
    default_env = data.get("env")
    if default_env is not None and not isinstance(default_env, str):
        raise SkillFileError(path, _line(nodes["env"]), "'env' must be a string")
    entries = data.get("skills")
    if not isinstance(entries, list):
        raise SkillFileError(path, _line(keys.get("skills", root)), "'skills' must be a list of skill entries")
    out: list[tuple[Skill, SkillStats]] = []
    seen: dict[str, int] = {}
    for entry, node in zip(entries, nodes["skills"].value, strict=True):
        line = _line(node)
        skill, stats = _parse_entry(path, line, entry, default_env)
        if skill.id in seen:
            raise SkillFileError(path, line, f"duplicate skill id {skill.id!r} (first at line {seen[skill.id]})")
        seen[skill.id] = line
        out.append((skill, stats))
    return out


def save_skills(path: str | os.PathLike[str], skills: Iterable[tuple[Skill, SkillStats]]) -> None:
    """Write skills and their stats to ``path`` atomically (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path):
        write_unlocked(path, skills)


def write_unlocked(path: Path, skills: Iterable[tuple[Skill, SkillStats]]) -> None:
    """The atomic write of :func:`save_skills`, for a caller already holding :func:`writer_lock`
    (a read-modify-write holds it across the read too). An existing file keeps its permissions."""
    doc = {"version": 1, "skills": [_entry(s, st) for s, st in skills]}
    text = _HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100) + _END + "\n"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _parse_entry(path: Path, line: int, entry: Any, default_env: str | None) -> tuple[Skill, SkillStats]:
    def fail(problem: str) -> SkillFileError:
        return SkillFileError(path, line, problem)

    if not isinstance(entry, dict):
        raise fail("a skill entry must be a mapping with at least 'id' and 'text'")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise fail(f"unknown key {sorted(unknown)[0]!r} in a skill entry (allowed: {', '.join(sorted(_ENTRY_KEYS))})")
    sid, text = entry.get("id"), entry.get("text")
    if not isinstance(sid, str) or not sid.strip():
        raise fail("'id' must be a non-empty string")
    if not isinstance(text, str) or not text.strip():
        raise fail(f"skill {sid!r}: 'text' must be a non-empty string")
    title = entry.get("title", sid)
    env = entry.get("env", default_env)
    if not isinstance(title, str):
        raise fail(f"skill {sid!r}: 'title' must be a string")
    if not isinstance(env, str) or not env:
        raise fail(f"skill {sid!r}: no 'env' (set it on the entry or at the top of the file)")
    lists = {}
    for key in ("task_types", "keywords"):
        value = entry.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise fail(f"skill {sid!r}: {key!r} must be a list of strings")
        lists[key] = tuple(v.strip() for v in value)
    raw_stats = entry.get("stats") or {}
    if not isinstance(raw_stats, Mapping) or set(raw_stats) - _STATS_KEYS:
        raise fail(f"skill {sid!r}: 'stats' must be a mapping with keys {', '.join(sorted(_STATS_KEYS))}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw_stats.values()):
        raise fail(f"skill {sid!r}: stats must be non-negative integers")
    stats = SkillStats(**raw_stats)
    if stats.successes > stats.episodes:
        raise fail(f"skill {sid!r}: stats.successes ({stats.successes}) > stats.episodes ({stats.episodes})")
    skill = Skill(sid.strip(), title.strip(), " ".join(text.split()), env, lists["task_types"], lists["keywords"])
    return skill, stats


def _entry(skill: Skill, stats: SkillStats) -> dict[str, Any]:
    return {
        "id": skill.id,
        "title": skill.title,
        "env": skill.env,
        "task_types": list(skill.task_types),
        "keywords": list(skill.keywords),
        "text": skill.text,
        "stats": {"retrieved": stats.retrieved, "episodes": stats.episodes, "successes": stats.successes},
    }


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock of ``path``'s writers (on ``<file>.lock``); not re-entrant."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; some filesystems do not allow it, which only weakens durability.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
