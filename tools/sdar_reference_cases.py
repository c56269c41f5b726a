"""Run the SDAR reference's own training-signal code on hand-made cases, for ``tests/train/test_fidelity.py``.

A developer tool, never imported by the package or the tests. It loads, from a user's checkout of the
SDAR reference (GitHub ZJU-REAL/SDAR, a verl-agent fork; nothing of it is vendored here), the pure
functions that make the training signal and evaluates them on the inputs below:

* the format rules: ``alfworld_projection``, ``webshop_projection``, ``search_projection``;
* the turn scores: ``EpisodeRewardManager`` (the episode's reward on each turn sample) and
  ``apply_invalid_action_penalty`` (an invalid turn's own penalty), then ``compute_grpo_outcome_advantage``
  with mean/std across steps (the default) and per episode;
* the actor loss pieces: ``compute_policy_loss`` (dual clip), ``kl_penalty`` (low_var_kl), ``agg_loss``
  (token-mean, as for the entropy term), ``compute_sdar_loss``, ``compute_rlsd_token_advantage`` and
  the RLSD trainer's lambda schedule;
* the actor's ``_forward_micro_batch`` on fixed logits: log-probs and entropies at the rollout temperature;
* skill choice and the teacher prompt: ``SkillProvider`` on the reference-layout folders in
  ``tests/data/reference_skills`` (our own text) and ``build_teacher_batch``'s prompt text.

Functions that live in modules with heavy imports (ray, DataProto) are taken out of their source file
with ``ast`` and run against small stand-ins for the batch object. Run it with any Python that has torch,
numpy and transformers (e.g. this project's ``.venv``):

    .venv/bin/python tools/sdar_reference_cases.py --sdar /path/to/SDAR --out tests/data/sdar_reference_cases.json
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_TEXTS = [
    "<think>the mug is on the desk</think><action>go to desk 1</action>",
    "<think>x</think>\n<action>take mug 1 from desk 1</action>",
    "<action>go to desk 1</action>",  # no think
    "<think>x</think> go to desk 1",  # no action tags
    "<think>x</think><action>go to desk 1",  # no closing tag
    "<THINK>x</THINK><action>open drawer 1</action>",  # think tags checked as written
    "<think>x</think><ACTION>open drawer 1</ACTION>",  # action tags in any case
    "<think>去书桌</think><action>go to desk 1</action>",  # CJK
    "<think>x</think><action>打开抽屉</action>",
    "<think>ok</think><action>fly to the moon</action>",  # inadmissible but well-formed
    "<think>a</think><action>search[red shoes]</action><action>click[buy now]</action>",
    "<think>日本語のカナ only</think><action>look</action>",  # kana is outside U+4E00..U+9FFF
    "",
    "<think></think><action></action>",
]
SEARCH_TEXTS = [
    "<search>who wrote hamlet</search>",
    "<think>x</think><answer>Shakespeare</answer>",
    "<search>a</search><answer>b</answer>",  # both
    "<search>a</search> then <search>b</search>",  # two searches
    "<answer>a</answer><answer>b</answer>",
    "no tags at all",
    "<SEARCH>Upper case</SEARCH>",
    "<search>unclosed",
    "<answer></answer>",
    "</search><search>after a stray close</search>",
    "<think>plan</think>\n<search>capital of france</search>\n",
]


def _load_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _function_from(path: Path, qualname: str, namespace: dict[str, Any]) -> Any:
    """Take one (possibly class-level) function out of a source file and define it in ``namespace``."""
    tree = ast.parse(path.read_text())
    owner, _, name = qualname.rpartition(".")
    nodes = tree.body
    if owner:
        nodes = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner).body
    node = next(n for n in nodes if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


class _Item:
    def __init__(self, batch: dict[str, Any], non_tensor: dict[str, Any]) -> None:
        self.batch, self.non_tensor_batch = batch, non_tensor


class _Batch:
    """What the reference's reward and penalty functions read of a DataProto."""

    def __init__(self, batch: dict[str, torch.Tensor], non_tensor: dict[str, np.ndarray]) -> None:
        self.batch, self.non_tensor_batch = batch, non_tensor

    def __len__(self) -> int:
        return len(next(iter(self.batch.values())))

    def __getitem__(self, i: int) -> _Item:
        return _Item({k: v[i] for k, v in self.batch.items()}, {k: v[i] for k, v in self.non_tensor_batch.items()})


# Three groups of turn samples: (group, episode, episode reward, this turn's response length, valid?).
# Group a: episodes of 3, 1 and 2 turns (a win among them, invalid turns in both outcomes); group b: two
# episodes with equal rewards (zero std); group c: a single one-turn episode.
TURNS = [
    ("a", "a0", 10.0, 4, True),
    ("a", "a0", 10.0, 3, False),
    ("a", "a0", 10.0, 5, True),
    ("a", "a1", 0.0, 2, False),
    ("a", "a2", 0.0, 6, True),
    ("a", "a2", 0.0, 1, False),
    ("b", "b0", 0.0, 3, True),
    ("b", "b1", 0.0, 4, True),
    ("b", "b1", 0.0, 2, False),
    ("c", "c0", 10.0, 3, True),
]


def _turn_scores(sdar: Path, penalty: float) -> dict[str, Any]:
    stub = types.ModuleType("verl")
    stub.DataProto = object  # type: ignore[attr-defined]
    sys.modules.setdefault("verl", stub)
    episode = _load_file(sdar / "agent_system/reward_manager/episode.py", "ref_episode")
    P, R = 3, 8
    n = len(TURNS)
    attention = torch.zeros((n, P + R), dtype=torch.long)
    attention[:, :P] = 1
    for i, (*_, length, _valid) in enumerate(TURNS):
        attention[i, P : P + length] = 1
    data = _Batch(
        {
            "prompts": torch.ones((n, P), dtype=torch.long),
            "responses": torch.ones((n, R), dtype=torch.long),
            "attention_mask": attention,
        },
        {
            "episode_rewards": np.array([t[2] for t in TURNS]),
            "episode_lengths": np.array([3] * n),
            "data_source": np.array(["text"] * n),
            "is_action_valid": np.array([t[4] for t in TURNS]),
            "uid": np.array([t[0] for t in TURNS], dtype=object),
            "traj_uid": np.array([t[1] for t in TURNS], dtype=object),
        },
    )
    tokenizer = types.SimpleNamespace(decode=lambda ids, skip_special_tokens=False: "")
    scores = episode.EpisodeRewardManager(tokenizer, num_examine=0)(data)
    data.batch["token_level_scores"] = scores
    penalise = _function_from(
        sdar / "verl/trainer/ppo/ray_trainer.py", "apply_invalid_action_penalty", {"np": np, "torch": torch}
    )
    penalise(data, invalid_action_penalty_coef=penalty)
    core = sys.modules["ref_core_algos"]
    mask = attention[:, P:].float()
    out: dict[str, Any] = {
        "turns": [list(t) for t in TURNS],
        "penalty": penalty,
        "scores": data.batch["token_level_scores"].sum(-1).tolist(),
    }
    for cross in (True, False):
        adv, _ = core.compute_grpo_outcome_advantage(
            data.batch["token_level_scores"],
            mask,
            data.non_tensor_batch["uid"],
            data.non_tensor_batch["traj_uid"],
            compute_mean_std_cross_steps=cross,
        )
        out["advantages_cross_steps" if cross else "advantages_per_episode"] = adv[:, 0].tolist()
        assert torch.equal(adv, adv[:, :1] * mask)  # one value per sample, on its response tokens only
    return out


def _losses(sdar: Path) -> dict[str, Any]:
    core = sys.modules["ref_core_algos"]
    sdar_utils = _load_file(sdar / "verl/trainer/ppo/sdar_utils.py", "ref_sdar_utils")
    rlsd_utils = _load_file(sdar / "verl/trainer/ppo/rlsd_utils.py", "ref_rlsd_utils")
    g = torch.Generator().manual_seed(0)
    shape = (4, 6)
    old = -torch.rand(shape, generator=g) * 3
    logp = old + torch.randn(shape, generator=g) * 0.8  # ratios well beyond the clip range both ways
    logp[1, 0] = old[1, 0] + 2.5  # a ratio of e^2.5 ~ 12 on a negative advantage: the dual clip acts
    ref = old + torch.randn(shape, generator=g) * 0.5
    ref[1, 1] = logp[1, 1] + 4.0  # exp(4) - 5 > 10: the low-var KL is clamped
    teacher = logp + torch.randn(shape, generator=g)
    entropy = torch.rand(shape, generator=g) * 2
    adv_seq = torch.tensor([1.5, -0.7, -2.0, 0.3])
    adv = adv_seq[:, None].expand(shape).clone()
    mask = torch.ones(shape)
    mask[2, 4:] = 0
    mask[3, 2:] = 0
    adv = adv * mask
    pg, clipfrac, _ppo_kl, clipfrac_lower = core.compute_policy_loss(
        old, logp, adv, mask, cliprange=0.2, clip_ratio_c=3.0
    )
    pg_no_dual, *_ = core.compute_policy_loss(old, logp, adv, mask, cliprange=0.2, clip_ratio_c=1e9)
    kld = core.kl_penalty(logp, ref, "low_var_kl")
    kl = core.agg_loss(kld, mask, "token-mean")
    ent = core.agg_loss(entropy, mask, "token-mean")
    sdar_loss, sdar_metrics = sdar_utils.compute_sdar_loss(logp, teacher, mask, gate_beta=5.0)
    opsd_loss, opsd_metrics = sdar_utils.compute_sdar_loss(logp, teacher, mask, gate_beta=0.0)
    lam_fn = _function_from(sdar / "verl/trainer/ppo/rlsd_ray_trainer.py", "RLSDRayTrainer._get_rlsd_lambda", {})
    holder = types.SimpleNamespace(rlsd_lambda_init=0.5, rlsd_lambda_warmdown_steps=100)
    lambdas = {str(step): lam_fn(holder, step) for step in (0, 1, 25, 50, 99, 100, 150)}
    rlsd = rlsd_utils.compute_rlsd_token_advantage(
        adv, old, teacher, mask, rlsd_lambda=lambdas["25"], rlsd_clip_eps=0.2
    )

    def t(x: torch.Tensor) -> Any:
        return x.tolist()

    return {
        "inputs": {
            "old_logp": t(old),
            "logp": t(logp),
            "ref_logp": t(ref),
            "teacher_logp": t(teacher),
            "entropy": t(entropy),
            "advantages": t(adv),
            "mask": t(mask),
        },
        "ppo": {
            "loss": pg.item(),
            "loss_without_dual_clip": pg_no_dual.item(),
            "clip_frac": clipfrac.item(),
            "dual_clip_frac": clipfrac_lower.item(),
        },
        "low_var_kl": {"per_token": t(kld), "token_mean": kl.item()},
        "entropy_token_mean": ent.item(),
        # dp_actor: policy_loss = pg * pg_loss_coef - entropy * entropy_coeff + kl * kl_coef + sdar * sdar_coef
        "actor_loss": {
            "coefs": {"entropy": 0.001, "kl": 0.01, "sdar": 0.01},
            "value": (pg - ent * 0.001 + kl * 0.01 + sdar_loss * 0.01).item(),
            "value_opsd_only": (pg * 0.0 - ent * 0.001 + kl * 0.01 + sdar_loss * 0.01).item(),
        },
        "sdar": {
            "loss": sdar_loss.item(),
            "metrics": sdar_metrics,
            "beta0_loss": opsd_loss.item(),
            "beta0_metrics": opsd_metrics,
        },
        "rlsd": {"lambdas": lambdas, "token_advantages_step25": t(rlsd)},
    }


def _format_rules(sdar: Path) -> dict[str, Any]:
    base = sdar / "agent_system/environments/env_package"
    alfworld = _load_file(base / "alfworld/projection.py", "ref_alfworld_projection")
    webshop = _load_file(base / "webshop/projection.py", "ref_webshop_projection")
    search = _load_file(base / "search/projection.py", "ref_search_projection")
    _, alf_valid = alfworld.alfworld_projection(list(FORMAT_TEXTS), [[]] * len(FORMAT_TEXTS))
    _, web_valid = webshop.webshop_projection(list(FORMAT_TEXTS))
    _, search_valid = search.search_projection(list(SEARCH_TEXTS))
    return {
        "think_action": {"texts": FORMAT_TEXTS, "alfworld": alf_valid, "webshop": web_valid},
        "search": {"texts": SEARCH_TEXTS, "valid": search_valid},
    }


def _skills(sdar: Path, fixtures: Path) -> dict[str, Any]:
    rlsd_utils = sys.modules["ref_rlsd_utils"]
    cases: dict[str, Any] = {}
    games = [
        "json_2.1.1/valid_seen/pick_and_place_simple-Book-None-SideTable-329/trial_1/game.tw-pddl",
        "json_2.1.1/train/pick_two_obj_and_place-Pen-None-Desk-310/trial_2/game.tw-pddl",
        "json_2.1.1/valid_unseen/pick_heat_then_place_in_recep-Egg-None-Fridge-10/trial_3/game.tw-pddl",
        "json_2.1.1/valid_unseen/look_at_obj_in_light-CD-None-DeskLamp-308/trial_1/game.tw-pddl",
        "somewhere/else/game.tw-pddl",
    ]
    provider = rlsd_utils.SkillProvider(str(fixtures / "alfworld"))
    cases["alfworld"] = [{"game_file": g, "text": provider.get_privileged_info(g)} for g in games]
    prompts = [
        "<|im_start|>user\nFind me a leather wallet and a belt for men<|im_end|>",
        "<|im_start|>user\nI need running shoes, size 9<|im_end|>",
        "<|im_start|>user\nI want a bottle of olive oil<|im_end|>",
        "<|im_start|>user\nWhich lamp or rug is cheaper<|im_end|>",
    ]
    provider = rlsd_utils.SkillProvider(str(fixtures / "webshop"))
    cases["webshop"] = [
        {"prompt": p, "data_source": "text", "text": provider.get_privileged_info_from_data_source("text", p)}
        for p in prompts
    ]
    questions = [
        ("nq", "who wrote hamlet"),
        ("hotpotqa", "which band formed first, a or b"),
        ("musique", "who is the mother of the director of x"),
        ("bamboogle", "which is older, the eiffel tower or big ben"),
        ("2wikimultihopqa", "who is older for sure, a or b"),
        ("popqa", "what is the capital of x"),
        ("triviaqa", "which or what"),
        ("unknown", "plain question"),
    ]
    provider = rlsd_utils.SkillProvider(str(fixtures / "search"))
    cases["search"] = [
        {"prompt": q, "data_source": ds, "text": provider.get_privileged_info_from_data_source(ds, q)}
        for ds, q in questions
    ]
    cases["skill_all_alfworld"] = rlsd_utils.SkillProvider(
        str(fixtures / "alfworld"), skill_all=True
    ).get_privileged_info("x")
    return cases


def _teacher_prompt(sdar: Path) -> dict[str, Any]:
    """The text build_teacher_batch tokenises for one sample (a stand-in tokenizer records it)."""
    seen: list[str] = []
    chat = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nYour task is to: put a mug in the sink<|im_end|>\n<|im_start|>assistant\n"
    tokenizer = types.SimpleNamespace(
        decode=lambda ids, skip_special_tokens=False: chat,
        encode=lambda text, add_special_tokens=False: seen.append(text) or [5, 6, 7],
        pad_token_id=0,
    )
    proto = types.SimpleNamespace(from_dict=lambda tensors, non_tensors=None, meta_info=None: tensors)
    namespace = {"torch": torch, "DataProto": proto, "compute_position_id_with_mask": lambda m: torch.cumsum(m, -1)}
    build = _function_from(sdar / "verl/trainer/ppo/rlsd_ray_trainer.py", "build_teacher_batch", namespace)
    provider = types.SimpleNamespace(get_privileged_info=lambda gf: "GENERAL SKILLS\n\nPICK SKILLS")
    batch = _Batch(
        {
            "input_ids": torch.ones((1, 6), dtype=torch.long),
            "attention_mask": torch.ones((1, 6), dtype=torch.long),
            "responses": torch.ones((1, 2), dtype=torch.long),
        },
        {"gamefile": np.array(["pick_and_place"], dtype=object)},
    )
    try:
        build(batch, provider, tokenizer, max_prompt_length=16)
    except Exception as e:  # the record is taken before any later step can fail
        if not seen:
            raise RuntimeError(f"build_teacher_batch failed before tokenising: {e}") from e
    return {"chat_text": chat, "skill_text": "GENERAL SKILLS\n\nPICK SKILLS", "teacher_text": seen[0]}


def _tempered_logprobs(sdar: Path) -> dict[str, Any]:
    """The actor's ``_forward_micro_batch`` (no padding removal, no fused kernels) on fixed logits: the
    log-probs and entropies of the response tokens at the rollout temperature."""
    namespace: dict[str, Any] = {"torch": torch, "Tuple": tuple, "verl_F": sys.modules["verl.utils.torch_functional"]}
    namespace["logprobs_from_logits"] = namespace["verl_F"].logprobs_from_logits
    forward = _function_from(
        sdar / "verl/workers/actor/dp_actor.py", "DataParallelPPOActor._forward_micro_batch", namespace
    )
    g = torch.Generator().manual_seed(0)
    n, seq, r, vocab = 3, 9, 4, 11
    logits = torch.randn(n, seq, vocab, generator=g) * 3
    responses = torch.randint(0, vocab, (n, r), generator=g)
    out: dict[str, Any] = {"logits": logits.tolist(), "responses": responses.tolist(), "temperatures": {}}
    for temperature in (1.0, 0.5, 0.7):
        module = lambda **_: types.SimpleNamespace(logits=logits.clone())  # noqa: E731  # div_ is in place
        actor = types.SimpleNamespace(device_name="cpu", use_remove_padding=False, use_fused_kernels=False,
                                      actor_module=module)  # fmt: skip
        batch = {"responses": responses, "input_ids": torch.zeros(n, seq, dtype=torch.long),
                 "attention_mask": torch.ones(n, seq, dtype=torch.long), "position_ids": torch.arange(seq).expand(n, seq)}  # fmt: skip
        entropy, logp = forward(actor, batch, temperature=temperature, calculate_entropy=True)
        out["temperatures"][str(temperature)] = {
            "log_probs": logp.float().tolist(),
            "entropy": entropy.float().tolist(),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sdar", required=True, help="a checkout of the SDAR reference (the folder holding verl/ and agent_system/)"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", help="the checkout's commit, where it is no git work tree")
    ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[1] / "tests/data/reference_skills"))
    args = ap.parse_args()
    sdar = Path(args.sdar).resolve()
    for name in ("tensordict",):  # imported by verl's torch_functional at module level, unused by these functions
        sys.modules.setdefault(name, types.SimpleNamespace(TensorDict=object))  # type: ignore[arg-type]
    verl = types.ModuleType("verl")
    verl.__path__ = []  # type: ignore[attr-defined]
    utils = types.ModuleType("verl.utils")
    utils.__path__ = []  # type: ignore[attr-defined]
    verl.DataProto = object  # type: ignore[attr-defined]  # episode.py imports the name only
    sys.modules.update({"verl": verl, "verl.utils": utils})
    utils.torch_functional = _load_file(sdar / "verl/utils/torch_functional.py", "verl.utils.torch_functional")  # type: ignore[attr-defined]
    core = _load_file(sdar / "verl/trainer/ppo/core_algos.py", "ref_core_algos")
    sys.modules["verl.trainer.ppo.core_algos"] = core
    commit = (
        args.commit
        or subprocess.run(["git", "-C", str(sdar), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        or "unknown"
    )
    result = {
        "provenance": {
            "repository": "ZJU-REAL/SDAR",
            "commit": commit,
            "torch": torch.__version__,
            "command": "tools/sdar_reference_cases.py " + " ".join(sys.argv[1:]),
        },
        "format": _format_rules(sdar),
        "turn_scores": {"alfworld_webshop": _turn_scores(sdar, 0.1), "search": _turn_scores(sdar, 0.01)},
        "losses": _losses(sdar),
        "skills": _skills(sdar, Path(args.fixtures)),
        "teacher_prompt": _teacher_prompt(sdar),
        "tempered_logprobs": _tempered_logprobs(sdar),
    }
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
