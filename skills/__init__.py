"""Skill memory for the SDAR teacher.

* :class:`Skill`, :class:`SkillStats`, :class:`SkillQuery` and the :class:`SkillMemory` protocol the
  environments' skill hook (:class:`sdar_envs.SkillHook`) talks to;
* :class:`SkillLibrary`, the memory: seed banks per environment (``skills/banks/*.yaml``), retrieval
  tiers ``keyword`` / ``embedding`` / ``random`` / ``ucb`` (:mod:`skills.retrieval`), usage statistics,
  atomic persistence (:mod:`skills.store`);
* :func:`grow_from_trajectory`: successful episodes become new skills (:mod:`skills.distill`);
* :func:`fit_skills` / :func:`skills_block` / :func:`privileged_prefix`: the teacher's skill block
  within a token budget;
* :class:`ReferenceSkills`: a skills folder in the SDAR reference's layout, chosen by its rules.

Command line: ``sdar-skills list|show|add|retrieve|stats`` (``python -m skills``).
"""

from skills.base import Skill, SkillMemory, SkillQuery, SkillStats
from skills.distill import Summarizer, Trajectory, grow_from_trajectory, procedure_from_trajectory
from skills.library import SkillLibrary
from skills.reference import ReferenceSkills
from skills.render import SKILLS_HEADER, fit_skills, privileged_prefix, skills_block
from skills.retrieval import TIERS, make_retriever
from skills.store import SEED_BANKS, SkillFileError, load_skills, save_skills, seed_bank_path

__all__ = [
    "SEED_BANKS",
    "SKILLS_HEADER",
    "TIERS",
    "ReferenceSkills",
    "Skill",
    "SkillFileError",
    "SkillLibrary",
    "SkillMemory",
    "SkillQuery",
    "SkillStats",
    "Summarizer",
    "Trajectory",
    "fit_skills",
    "grow_from_trajectory",
    "load_skills",
    "make_retriever",
    "privileged_prefix",
    "procedure_from_trajectory",
    "save_skills",
    "seed_bank_path",
    "skills_block",
]
