"""Skill memory for the SDAR teacher: skill records, the memory protocol environments talk to, and
implementations of it.

The environments only know the :class:`SkillMemory` protocol (through
:class:`sdar_envs.wrappers.SkillHook`); anything with ``retrieve`` and ``record_outcome`` plugs in.
"""

from skills.base import InMemorySkillMemory, Skill, SkillMemory, SkillQuery

__all__ = ["InMemorySkillMemory", "Skill", "SkillMemory", "SkillQuery"]
