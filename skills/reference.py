"""Skills from a folder laid out as the SDAR reference's ``skills/<env>/`` (``--skill_dir``), chosen by
the reference's own rules, so a run can use exactly the text a user's reference checkout holds.

The layout: ``skill_mapping.json`` with ``skill_files`` (skill name -> markdown file in the folder; one
of them ``general_skills``), ``task_to_skill`` (task type -> skill name, in order) and, optionally,
``task_keywords`` (task type -> keywords, in order). The privileged text of a turn is the general
skills plus the task type's skill, joined by a blank line; which task type applies is decided as the
reference decides it:

* a game file (ALFWorld): the first task type, in ``task_to_skill`` order, that occurs in its path;
* otherwise by data source (Search-QA): ``popqa`` -> entity_attribute_lookup, ``nq``/``triviaqa`` ->
  direct_retrieval, ``hotpotqa`` -> multi_hop_reasoning; else a prompt holding "which" and "or" but
  not "for" (substrings, lower-cased) -> compare; else ``2wikimultihopqa``/``musique``/``bamboogle`` ->
  multi_hop_reasoning;
* data source ``text`` (ALFWorld/WebShop without a game file) with none of those: every task type with
  a keyword in the lower-cased prompt, each adding its skill (the general skills once).

``skill_all=True`` gives every skill, general first. Nothing of the reference is copied: only its
folder format is read.
"""

from __future__ import annotations

import json
from pathlib import Path

from skills.store import SkillFileError

__all__ = ["ReferenceSkills"]

_BY_SOURCE = {
    "popqa": "entity_attribute_lookup",
    "nq": "direct_retrieval",
    "triviaqa": "direct_retrieval",
    "hotpotqa": "multi_hop_reasoning",
}
_MULTI_HOP_SOURCES = ("2wikimultihopqa", "musique", "bamboogle")
GENERAL = "general_skills"


class ReferenceSkills:
    """The privileged skill text of a turn, from a reference-layout skills folder."""

    def __init__(self, skill_dir: str | Path, skill_all: bool = False) -> None:
        self.skill_dir = Path(skill_dir)
        mapping_file = self.skill_dir / "skill_mapping.json"
        if not mapping_file.is_file():
            raise SkillFileError(
                mapping_file,
                None,
                "not found (a reference skills folder holds skill_mapping.json and its markdown files)",
            )
        try:
            mapping = json.loads(mapping_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SkillFileError(
                mapping_file, e.lineno if isinstance(e, json.JSONDecodeError) else None, f"not valid JSON ({e})"
            ) from None
        if (
            not isinstance(mapping, dict)
            or not isinstance(mapping.get("skill_files"), dict)
            or not isinstance(mapping.get("task_to_skill"), dict)
        ):
            raise SkillFileError(mapping_file, None, "needs the mappings 'skill_files' and 'task_to_skill'")
        self.contents: dict[str, str] = {}
        for name, filename in mapping["skill_files"].items():
            path = self.skill_dir / str(filename)
            if not path.is_file():
                raise SkillFileError(
                    mapping_file, None, f"skill {name!r} names {filename!r}, which is not in {self.skill_dir}"
                )
            self.contents[name] = path.read_text(encoding="utf-8").strip()
        self.task_to_skill: dict[str, str] = dict(mapping["task_to_skill"])
        self.task_keywords: dict[str, list[str]] = {
            k: list(v or []) for k, v in (mapping.get("task_keywords") or {}).items()
        }
        self.skill_all = skill_all

    def _text(self, task_types: list[str]) -> str:
        parts = [self.contents.get(GENERAL, "")]
        for task_type in task_types:
            name = self.task_to_skill.get(task_type)
            if name in self.contents:
                parts.append(self.contents[name])
        return "\n\n".join(parts)

    def _all(self) -> str:
        return "\n\n".join([self.contents.get(GENERAL, "")] + [t for n, t in self.contents.items() if n != GENERAL])

    def task_type_of_game(self, game_file: str) -> str | None:
        return next((t for t in self.task_to_skill if t in game_file), None)

    def text_for(self, *, prompt_text: str, game_file: str | None = None, data_source: str | None = None) -> str:
        """The skill text for one turn: its chat-formatted prompt text, the game file (ALFWorld) and the
        question's data source (Search-QA; ``text`` or None for ALFWorld/WebShop)."""
        if self.skill_all:
            return self._all()
        if game_file is not None:
            task_type = self.task_type_of_game(game_file)
            return self._text([task_type] if task_type else [])
        source = data_source or "text"
        lowered = prompt_text.lower()
        task_type = _BY_SOURCE.get(source)
        if task_type is None:
            if "which" in lowered and "or" in lowered and "for" not in lowered:
                task_type = "compare"
            elif source in _MULTI_HOP_SOURCES:
                task_type = "multi_hop_reasoning"
        if task_type is None and source == "text":
            return self._text(
                [t for t, words in self.task_keywords.items() if words and any(w in lowered for w in words)]
            )
        return self._text([task_type] if task_type else [])
