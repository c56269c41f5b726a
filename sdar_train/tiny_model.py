"""A tiny local Qwen2 policy (~1M parameters) with its own byte-level BPE tokenizer and a ChatML chat
template, so that training and tests run on a CPU with no download.

    python -m sdar_train.tiny_model --out artifacts/tiny-qwen2      # or --model tiny in sdar_train

The tokenizer is trained with exactly the pre-tokenisation transformers applies to ``model_type=qwen2``
(NFC, Qwen's split regex, byte-level), because ``AutoTokenizer`` rebuilds a Qwen2 tokenizer with that
pipeline whatever the file says; :func:`build_tiny_model` checks the round trip through
``AutoTokenizer``. Its training text is the suite's own: prompts, skill banks, ALFWorld walkthrough
commands, Search-QA questions and passages. Everything is seeded: the same call builds the same model.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "TINY_VERSION", "build_tiny_model", "tiny_model_path"]

TINY_VERSION = "v1"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _training_text() -> Iterator[str]:
    from sdar_envs.alfworld.data import list_tasks, read_walkthrough
    from sdar_envs.alfworld.env import ALFWORLD_PROMPT
    from sdar_envs.searchqa.data import CORPUS_PATH, load_questions
    from sdar_envs.searchqa.env import INVALID_MESSAGE, SEARCHQA_PROMPT
    from skills.store import SEED_BANKS, seed_bank_path

    for builder in (ALFWORLD_PROMPT, SEARCHQA_PROMPT):
        yield builder.first_template
        yield builder.template
    yield INVALID_MESSAGE
    for env in SEED_BANKS:
        yield seed_bank_path(env).read_text(encoding="utf-8")
    for split in ("valid_seen", "valid_unseen"):
        for task in list_tasks(split):
            commands = read_walkthrough(task.game_file)
            yield "\n".join(f"<action>{c}</action> '{c}'" for c in commands)
    for r in load_questions(["nq", "hotpotqa", "musique"], "all"):
        yield f"<search>{r.question}</search> <answer>{r.golden_answers[0]}</answer>"
    with gzip.open(CORPUS_PATH, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i % 4 == 0:  # a quarter of the passages is plenty for 4k merges
                yield json.loads(line)["contents"]


def _train_tokenizer(vocab_size: int, texts: Iterable[str] | None = None) -> object:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(
        models.BPE(
            unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text() if texts is None else texts, trainer=trainer)
    return tok


def build_tiny_model(
    out: str | os.PathLike[str],
    *,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    texts: Iterable[str] | None = None,
) -> Path:
    """Train the tokenizer, initialise a Qwen2ForCausalLM and save both to ``out`` (atomically).

    ``texts``: the tokenizer's training text (default: the suite's prompts, skills, walkthroughs and
    Search-QA text); the replication trains it on the text its model will read."""
    import torch
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        raw = _train_tokenizer(vocab_size, texts)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(staging)
        torch.manual_seed(seed)
        config = Qwen2Config(
            vocab_size=len(fast),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 3,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
            eos_token_id=int(fast.convert_tokens_to_ids("<|im_end|>")),  # type: ignore[arg-type]
            pad_token_id=int(fast.convert_tokens_to_ids("<|endoftext|>")),  # type: ignore[arg-type]
            bos_token_id=None,
        )
        model = Qwen2ForCausalLM(config)
        model.generation_config.eos_token_id = [config.eos_token_id, config.pad_token_id]
        model.generation_config.pad_token_id = config.pad_token_id
        # whichever process of a distributed launch builds it must write it: transformers 5 writes model
        # files from torch.distributed rank 0 only
        model.should_save_on_this_rank = lambda is_main_process: True  # type: ignore[method-assign]
        model.save_pretrained(staging)
        if not (staging / "config.json").is_file() or not list(staging.glob("*.safetensors")):
            raise RuntimeError(f"the tiny model was not written to {staging}")
        # transformers re-creates a qwen2 tokenizer with its own pipeline: the ids must not change.
        reloaded = AutoTokenizer.from_pretrained(staging)
        sample = "Your task is to: put a hot apple in fridge. <action>go to countertop 1</action> Röntgen 1901"
        if (
            reloaded(sample).input_ids != fast(sample).input_ids
            or reloaded.decode(reloaded(sample).input_ids) != sample
        ):
            raise RuntimeError("the tiny tokenizer does not round-trip through AutoTokenizer")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def tiny_model_path() -> Path:
    """Where ``--model tiny`` lives: built on first use under ``$SDAR_CACHE_DIR/models``."""
    from filelock import FileLock

    root = Path(os.environ.get("SDAR_CACHE_DIR", Path.home() / ".cache" / "sdar")) / "models"
    path = root / f"tiny-qwen2-{TINY_VERSION}"
    if not (path / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        # the processes of a distributed launch all get here on a fresh cache: one builds, the others wait
        with FileLock(str(root / f"{path.name}.lock")):
            if not (path / "config.json").exists():
                build_tiny_model(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    path = build_tiny_model(
        args.out, vocab_size=args.vocab_size, hidden_size=args.hidden_size, layers=args.layers, seed=args.seed
    )
    from transformers import AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    print(f"tiny Qwen2 written to {path}: {n / 1e6:.2f}M parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
