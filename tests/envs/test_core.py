"""The contract's pure helpers: action extraction and prompt building."""

from __future__ import annotations

from sdar_envs.alfworld.env import ALFWORLD_PROMPT, project_action
from sdar_envs.core import SKILLS_HEADER, Turn, extract_tag, normalize_command


def test_extract_tag_takes_the_last_and_tolerates_garbage():
    assert extract_tag("<action>a</action> then <action> b </action>", "action") == "b"
    assert extract_tag("<ACTION>x</ACTION>", "action") == "x"
    assert extract_tag("<action>\nmulti\nline\n</action>", "action") == "multi\nline"
    assert extract_tag("no tags", "action") is None
    assert extract_tag("<action>unclosed", "action") is None
    assert extract_tag(None, "action") is None  # type: ignore[arg-type]


def test_normalize_and_project():
    assert normalize_command("  Go  to   Desk 1. ") == "go to desk 1"
    admissible = ["go to desk 1", "look"]
    assert project_action("<action>GO TO desk 1</action>", admissible) == "go to desk 1"
    assert project_action("look", admissible) == "look"
    assert project_action("<action>jump</action> look", admissible) is None  # a tag, but not admissible
    assert project_action("I think I should look", admissible) is None  # prose is not a bare command


def test_prompt_shows_only_the_last_h_turns_with_true_step_numbers():
    history = [Turn(f"obs{i}", f"act{i}") for i in range(1, 6)]
    prompt = ALFWORLD_PROMPT(
        task="heat a mug", observation="now", history=history, admissible_actions=["look", "inventory"]
    )
    assert "[Observation 4: obs4, Action 4: act4]" in prompt
    assert "[Observation 5: obs5, Action 5: act5]" in prompt
    assert "obs3" not in prompt and "act3" not in prompt
    assert "You have taken 5 step(s)" in prompt and "You are now at step 6" in prompt
    assert "'look'\n'inventory'" in prompt and "heat a mug" in prompt
    assert SKILLS_HEADER not in prompt


def test_first_prompt_and_skills_block_prefix():
    plain = ALFWORLD_PROMPT(task="t", observation="o", admissible_actions=["look"])
    assert "step(s) so far" not in plain
    teacher = ALFWORLD_PROMPT(
        task="t", observation="o", admissible_actions=["look"], skills=["Heat with the microwave.", ""]
    )
    assert teacher.startswith(SKILLS_HEADER + "\n- Heat with the microwave.\n\n")
    assert teacher.endswith(plain)  # the teacher sees the student's prompt, with skills in front
