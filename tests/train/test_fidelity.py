"""The training signal against the SDAR reference's own code.

``tests/data/sdar_reference_cases.json`` holds what the reference's functions (ZJU-REAL/SDAR, commit in
the file) returned on hand-made inputs, made by ``tools/sdar_reference_cases.py``; the cases here feed
the same inputs to this project's functions. Hand-computed cases beside them say why the numbers are
what they are.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sdar_envs.core import think_action_format
from sdar_envs.searchqa.env import searchqa_format
from sdar_train.config import TrainConfig, resolve_reference_defaults
from sdar_train.losses import (
    actor_loss,
    entropy_bonus,
    low_var_kl,
    ppo_clip_loss,
    rlsd_lambda,
    rlsd_token_advantages,
    sdar_loss,
    turn_advantages,
)
from sdar_train.rollout import Episode, Rollout, TurnSample
from skills import ReferenceSkills, SkillFileError, privileged_prefix
from tests.helpers import DATA

REF = json.loads((DATA / "sdar_reference_cases.json").read_text())


def test_the_cases_come_from_the_reference():
    assert REF["provenance"]["repository"] == "ZJU-REAL/SDAR" and len(REF["provenance"]["commit"]) == 40


# --- format validity ----------------------------------------------------------------------------------
def test_think_action_format_is_the_references_rule():
    cases = REF["format"]["think_action"]
    assert cases["alfworld"] == cases["webshop"]
    assert [int(think_action_format(t)) for t in cases["texts"]] == cases["alfworld"]


def test_searchqa_format_is_the_references_rule():
    cases = REF["format"]["search"]
    assert [int(searchqa_format(t)) for t in cases["texts"]] == cases["valid"]


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("<think>go</think><action>go to desk 1</action>", True),
        ("<think>go</think><action>fly to the moon</action>", True),  # inadmissible, still well-formed
        ("<action>go to desk 1</action>", False),  # no think
        ("<think>去</think><action>go to desk 1</action>", False),  # CJK
        ("<think>go</think>go to desk 1", False),
    ],
)
def test_format_rule_by_hand(text, valid):
    assert think_action_format(text) is valid


def test_envs_report_format_and_admissibility_separately():
    import gymnasium as gym

    env = gym.make("SDAR/ALFWorld-v0", split="valid_seen")
    _, info = env.reset(seed=0)
    assert info["format_valid"] and info["admissible"]
    *_, info = env.step("<think>hm</think><action>fly to the moon</action>")  # the engine: "Nothing happens."
    assert info["format_valid"] and not info["admissible"] and info["valid_action"] is False
    *_, info = env.step(info["admissible_actions"][0])  # a bare command: accepted, but not the reference's format
    assert not info["format_valid"] and info["admissible"]


# --- turn scores and advantages -----------------------------------------------------------------------
def _rollout(turns: list[list]) -> Rollout:
    episodes: dict[str, int] = {}
    groups: dict[str, int] = {}
    eps: list[Episode] = []
    samples = []
    for group, episode, reward, length, valid in turns:
        if episode not in episodes:
            episodes[episode] = len(eps)
            gid = groups.setdefault(group, len(groups))
            eps.append(Episode(group=gid, task_id=group, task_type="t", won=reward > 0, env_return=reward / 10))
        samples.append(TurnSample(episodes[episode], [1], [2] * length, None, format_valid=valid, admissible=True))
    return Rollout(eps, samples)


@pytest.mark.parametrize(("env", "scale"), [("alfworld_webshop", 10.0), ("search", 10.0)])
def test_turn_scores_and_advantages_equal_the_references(env, scale):
    case = REF["turn_scores"][env]
    rollout = _rollout(case["turns"])
    scores = rollout.turn_scores(reward_scale=scale, penalty=case["penalty"])
    assert scores == pytest.approx(case["scores"], abs=1e-6)
    groups = torch.tensor([rollout.episodes[s.episode].group for s in rollout.samples])
    episodes = torch.tensor([s.episode for s in rollout.samples])
    for cross, key in ((True, "advantages_cross_steps"), (False, "advantages_per_episode")):
        got = turn_advantages(torch.tensor(scores), groups, episodes, cross_steps=cross)
        assert got.tolist() == pytest.approx(case[key], rel=1e-4, abs=1e-5), key


def test_turn_scores_by_hand():
    """A won 3-turn episode with one invalid turn, a lost 1-turn invalid episode: the penalty lands on the
    invalid turn alone, once, and a long failure cannot outweigh a success."""
    rollout = _rollout(
        [["g", "a", 10.0, 2, True], ["g", "a", 10.0, 2, False], ["g", "a", 10.0, 2, True], ["g", "b", 0.0, 2, False]]
    )
    assert rollout.turn_scores(reward_scale=10.0, penalty=0.1) == pytest.approx([10.0, 9.9, 10.0, -0.1])
    assert rollout.turn_scores(reward_scale=10.0, penalty=0.1, rule="admissible") == [10.0, 10.0, 10.0, 0.0]
    # cross-step statistics: mean and unbiased std of the four scores
    s = torch.tensor([10.0, 9.9, 10.0, -0.1])
    adv = turn_advantages(s, torch.zeros(4), torch.tensor([0, 0, 0, 1]))
    mean, std = 29.8 / 4, math.sqrt(sum((x - 29.8 / 4) ** 2 for x in s.tolist()) / 3)
    assert adv.tolist() == pytest.approx([(x - mean) / (std + 1e-6) for x in s.tolist()], rel=1e-5)
    # a group with a single score: mean 0, std 1 (the reference's rule), so the score passes through
    assert turn_advantages(torch.tensor([2.0]), torch.tensor([0]), torch.tensor([0])).item() == pytest.approx(
        2.0 / (1 + 1e-6)
    )
    # equal scores: no signal
    assert turn_advantages(torch.tensor([1.0, 1.0, 1.0]), torch.zeros(3), torch.tensor([0, 1, 2])).abs().max() < 1e-6


# --- the actor loss -----------------------------------------------------------------------------------
def _loss_inputs() -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in REF["losses"]["inputs"].items()}


def test_ppo_dual_clip_kl_entropy_and_sdar_equal_the_references():
    x, ref = _loss_inputs(), REF["losses"]
    loss, frac = ppo_clip_loss(x["logp"], x["old_logp"], x["advantages"], x["mask"], clip=0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx(ref["ppo"]["loss"], rel=1e-5) and frac.item() == pytest.approx(
        ref["ppo"]["clip_frac"]
    )
    plain, _ = ppo_clip_loss(x["logp"], x["old_logp"], x["advantages"], x["mask"], clip=0.2, dual_clip=None)
    assert plain.item() == pytest.approx(ref["ppo"]["loss_without_dual_clip"], rel=1e-5)
    assert ref["ppo"]["dual_clip_frac"] > 0 and plain.item() > loss.item()  # the case makes the dual clip act
    assert low_var_kl(x["logp"], x["ref_logp"], x["mask"]).item() == pytest.approx(
        ref["low_var_kl"]["token_mean"], rel=1e-5
    )
    assert max(max(row) for row in ref["low_var_kl"]["per_token"]) == 10.0  # one token hits the clamp
    assert entropy_bonus(x["entropy"], x["mask"], 0.001).item() == pytest.approx(
        -0.001 * ref["entropy_token_mean"], rel=1e-5
    )
    sd, stats = sdar_loss(x["logp"], x["teacher_logp"], x["mask"], beta=5.0)
    assert sd.item() == pytest.approx(ref["sdar"]["loss"], rel=1e-5)
    assert stats["gate_mean"].item() == pytest.approx(ref["sdar"]["metrics"]["sdar/gate_mean"], rel=1e-5)
    assert stats["gate_active"].item() == pytest.approx(ref["sdar"]["metrics"]["sdar/gate_active_ratio"], rel=1e-5)
    assert stats["gap_mean"].item() == pytest.approx(ref["sdar"]["metrics"]["sdar/teacher_gap_mean"], rel=1e-5)
    opsd, _ = sdar_loss(x["logp"], x["teacher_logp"], x["mask"], beta=0.0)
    assert opsd.item() == pytest.approx(ref["sdar"]["beta0_loss"], rel=1e-5)


def test_the_combined_actor_loss_equals_the_references():
    x, ref = _loss_inputs(), REF["losses"]["actor_loss"]
    common = dict(
        old_logp=x["old_logp"],
        advantages=x["advantages"],
        ref_logp=x["ref_logp"],
        teacher_logp=x["teacher_logp"],
        entropy=x["entropy"],
        clip=0.2,
        dual_clip=3.0,
        entropy_coef=0.001,
        kl_coef=0.01,
        sdar_coef=0.01,
        sdar_beta=5.0,
    )
    loss, terms = actor_loss(x["logp"], x["mask"], **common)
    assert loss.item() == pytest.approx(ref["value"], rel=1e-5)
    only, _ = actor_loss(x["logp"], x["mask"], policy_gradient=False, **common)  # OPSD alone: no policy-gradient term
    assert only.item() == pytest.approx(ref["value_opsd_only"], rel=1e-5)
    assert {"pg_loss", "clip_frac", "kl", "sdar_loss", "gate_mean"} <= set(terms)


def test_dual_clip_by_hand():
    """A = -1 and ratio e^2 ~ 7.39: plain PPO charges max(7.39, 0.8) = 7.39, the dual clip caps it at 3."""
    logp, old, mask = torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.ones(1, 1)
    assert ppo_clip_loss(logp, old, torch.tensor([[-1.0]]), mask, dual_clip=None)[0].item() == pytest.approx(
        math.exp(2)
    )
    assert ppo_clip_loss(logp, old, torch.tensor([[-1.0]]), mask, dual_clip=3.0)[0].item() == pytest.approx(3.0)
    assert ppo_clip_loss(logp, old, torch.tensor([[1.0]]), mask, dual_clip=3.0)[0].item() == pytest.approx(
        -1.2
    )  # A > 0: clipped at 1.2


def test_rlsd_schedule_and_token_advantages_equal_the_references():
    x, ref = _loss_inputs(), REF["losses"]["rlsd"]
    assert {int(k): rlsd_lambda(int(k), 0.5, 100) for k in ref["lambdas"]} == pytest.approx(
        {int(k): v for k, v in ref["lambdas"].items()}
    )
    lam = rlsd_lambda(25, 0.5, 100)
    got = rlsd_token_advantages(x["advantages"], x["teacher_logp"] - x["old_logp"], lam, 0.2) * x["mask"]
    assert got.flatten().tolist() == pytest.approx(
        torch.tensor(ref["token_advantages_step25"]).flatten().tolist(), rel=1e-5, abs=1e-7
    )


# --- skills and the teacher prompt ---------------------------------------------------------------------
def test_reference_skill_folders_choose_as_the_reference():
    cases = REF["skills"]
    alfworld = ReferenceSkills(DATA / "reference_skills" / "alfworld")
    for c in cases["alfworld"]:
        assert alfworld.text_for(prompt_text="", game_file=c["game_file"]) == c["text"], c["game_file"]
    webshop = ReferenceSkills(DATA / "reference_skills" / "webshop")
    for c in cases["webshop"]:
        assert webshop.text_for(prompt_text=c["prompt"], data_source=c["data_source"]) == c["text"], c["prompt"]
    search = ReferenceSkills(DATA / "reference_skills" / "search")
    for c in cases["search"]:
        assert search.text_for(prompt_text=c["prompt"], data_source=c["data_source"]) == c["text"], c
    assert (
        ReferenceSkills(DATA / "reference_skills" / "alfworld", skill_all=True).text_for(prompt_text="")
        == cases["skill_all_alfworld"]
    )


def test_a_broken_reference_skill_folder_says_what_is_wrong(tmp_path):
    with pytest.raises(SkillFileError, match="skill_mapping.json: not found"):
        ReferenceSkills(tmp_path)
    (tmp_path / "skill_mapping.json").write_text(
        '{"skill_files": {"general_skills": "general.md"}, "task_to_skill": {}}'
    )
    with pytest.raises(SkillFileError, match="general.md"):
        ReferenceSkills(tmp_path)
    (tmp_path / "skill_mapping.json").write_text("{not json")
    with pytest.raises(SkillFileError, match="skill_mapping.json:1: not valid JSON"):
        ReferenceSkills(tmp_path)


def test_teacher_prompt_text_is_the_references():
    case = REF["teacher_prompt"]
    assert privileged_prefix([case["skill_text"]]) + case["chat_text"] == case["teacher_text"]


# --- the defaults ---------------------------------------------------------------------------------------
def test_defaults_are_the_references_training_signal():
    cfg = TrainConfig()
    assert (cfg.train_reward, cfg.invalid_rule, cfg.advantage, cfg.teacher_placement) == (
        "won",
        "format",
        "turn",
        "before_chat",
    )
    assert (cfg.dual_clip, cfg.entropy_coef, cfg.weight_decay, cfg.max_grad_norm, cfg.mini_batch_size) == (
        3.0,
        0.001,
        0.01,
        1.0,
        256,
    )
    assert (cfg.sdar_beta, cfg.sdar_coef, cfg.kl_coef, cfg.rlsd_lambda, cfg.rlsd_warmdown_steps) == (
        5.0,
        0.01,
        0.01,
        0.5,
        100,
    )
    for env, scale, penalty, temperature in [
        ("SDAR/ALFWorld-v0", 10, 0.1, 0.4),
        ("SDAR/WebShop-v0", 10, 0.1, 0.4),
        ("SDAR/SearchQA-v0", 1, 0.01, 0.0),
    ]:
        resolved = resolve_reference_defaults(TrainConfig(env=env))
        assert (resolved.reward_scale, resolved.invalid_penalty, resolved.eval_temperature) == (
            scale,
            penalty,
            temperature,
        ), env
    mine = resolve_reference_defaults(
        TrainConfig(env="SDAR/WebShop-v0", reward_scale=1.0, invalid_penalty=0.0, eval_temperature=1.0)
    )
    assert (mine.reward_scale, mine.invalid_penalty, mine.eval_temperature) == (1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="teacher_placement"):
        TrainConfig(teacher_placement="system")
    with pytest.raises(ValueError, match="dual_clip"):
        TrainConfig(dual_clip=0.5)


def test_the_response_limit_is_the_environments_unless_a_config_says_and_the_paper_configs_say_512(tmp_path):
    """A reply is sized to the environment's actions by default (an action of 30 tokens does not need 512);
    the paper's configs keep the reference's 512, and any explicit value wins."""
    from sdar_train.config import load_config

    limits = {"SDAR/ALFWorld-v0": 96, "SDAR/WebShop-v0": 128, "SDAR/SearchQA-v0": 96}
    for env, limit in limits.items():
        assert resolve_reference_defaults(TrainConfig(env=env)).max_response_tokens == limit
        assert resolve_reference_defaults(TrainConfig(env=env, max_response_tokens=40)).max_response_tokens == 40
    for name in ("alfworld_sdar.yaml", "webshop_sdar.yaml", "searchqa_sdar.yaml"):
        assert resolve_reference_defaults(load_config(name)).max_response_tokens == 512, name
    with pytest.raises(ValueError, match="max_response_tokens"):
        TrainConfig(max_response_tokens=-1)


def test_demonstrations_follow_each_envs_format_rule():
    """SFT targets are valid turns under the rule the penalty uses: ALFWorld/WebShop commands get an
    (empty) think block before their action tags; Search-QA's tagged actions stay as they are."""
    from sdar_envs import env_class
    from sdar_train.trainer import response_format

    for env_id, action in (
        ("SDAR/ALFWorld-v0", "go to desk 1"),
        ("SDAR/WebShop-v0", "click[buy now]"),
        ("SDAR/SearchQA-v0", "<search>x</search>"),
    ):
        rule = env_class(env_id).format_valid
        text = response_format(action, rule)
        assert rule(text), (env_id, text)
    assert response_format("<answer>y</answer>", env_class("SDAR/SearchQA-v0").format_valid) == "<answer>y</answer>"


@pytest.mark.parametrize("temperature", ["1.0", "0.5", "0.7"])
def test_log_probs_and_entropy_at_the_rollout_temperature_are_the_references(temperature):
    """The reference's actor (``_forward_micro_batch``) divides the logits by the rollout temperature
    before log-probs and entropy; ``response_logprobs`` on the same logits gives the same numbers."""
    from types import SimpleNamespace

    from sdar_train.policy import pack, response_logprobs

    case = REF["tempered_logprobs"]
    logits, responses = torch.tensor(case["logits"]), case["responses"]
    r = len(responses[0])

    def model(**kwargs):  # the logits the reference's module returned, as logits_to_keep = r + 1 gives them
        assert kwargs["logits_to_keep"] == r + 1
        return SimpleNamespace(logits=logits[:, -(r + 1) :].clone())

    # (left-padded: the layout whose logit columns are the reference's last r + 1; the right-padded one
    # scores the same numbers, tests/train/test_real_model.py)
    batch = pack([[1, 2, 3]] * len(responses), responses, pad_id=0, right_padded=False)
    logp, ent = response_logprobs(model, batch, torch.device("cpu"), with_entropy=True, temperature=float(temperature))
    ref = case["temperatures"][temperature]
    assert torch.allclose(logp, torch.tensor(ref["log_probs"]), atol=1e-4)
    assert torch.allclose(ent, torch.tensor(ref["entropy"]), atol=1e-4)
