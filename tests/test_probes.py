"""Hidden-state and text probes: Block Influence and angular distance on tiny models equal a
direct computation from HF's `output_hidden_states` (batch of one, no padding); padded batches
give the same; the probe runner's observations feed the searchers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from searchers.oneshot import AngularDistance, BlockInfluence
from tale_opt.evaluation.hidden_states import hidden_state_stats, truncate_texts
from tale_opt.evaluation.perplexity import evaluate_perplexity, prepare_text
from tale_opt.evaluation.probes import (
    ProbeRunner,
    angular_distance_metrics,
    block_influence_metrics,
)
from tale_opt.types import (
    ANGULAR_DISTANCE,
    BLOCK_INFLUENCE,
    PERPLEXITY,
    Candidate,
    DropSet,
    angular_distance_key,
    block_influence_key,
)
from tests.conftest import make_tiny_model, make_tiny_tokenizer

FAMILIES = ["llama", "qwen2", "mistral", "qwen3", "gemma2", "gemma3_text"]
TEXTS = [
    "the cat sat on the mat.",
    "a much longer text, so that the batch needs left padding: 1 2 3 4 5 6 7 8 9.",
    "mid length text here",
    "ok",
]


def reference_states(model: nn.Module, ids: list[int]) -> list[torch.Tensor]:
    """h_0..h_L of one unpadded sequence from HF's output_hidden_states. Its last entry is the
    final norm's output, so the norm is swapped for the identity to read the pre-norm state."""
    norm = model.model.norm
    model.model.norm = nn.Identity()
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        model.model.norm = norm
    return [h[0].float() for h in out.hidden_states]  # L+1 tensors [T, H]


def reference_stats(
    model: nn.Module, sequences
) -> tuple[list[float], dict[tuple[int, int], float]]:
    """Token-weighted BI per layer, and mean last-token angular distance d(l, n)."""
    states = [reference_states(model, list(ids)) for ids in sequences]
    n_layers = len(states[0]) - 1
    n_tokens = sum(len(ids) for ids in sequences)
    bi = [
        1
        - sum(F.cosine_similarity(h[i], h[i + 1], dim=-1).sum().item() for h in states) / n_tokens
        for i in range(n_layers)
    ]
    angular = {}
    for n in range(1, n_layers + 1):
        for start in range(n_layers - n + 1):
            total = 0.0
            for h in states:
                cos = F.cosine_similarity(h[start][-1], h[start + n][-1], dim=0).clamp(-1, 1)
                total += math.acos(cos.item()) / math.pi
            angular[start, n] = total / len(states)
    return bi, angular


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_state_probes_equal_a_direct_computation_with_and_without_padding(family):
    model, tokenizer = make_tiny_model(family), make_tiny_tokenizer()
    # Trained-looking final norm: a unit-weight one would hide a post-norm capture (cosines
    # do not see a per-token rescaling).
    torch.manual_seed(1)
    model.model.norm.weight.data.uniform_(0.2, 3.0)
    sequences = truncate_texts(tokenizer, TEXTS, max_length=64)
    bi, angular = reference_stats(model, sequences)
    for batch_size in (1, 3):  # 3: padded batches of different lengths
        stats = hidden_state_stats(model, sequences, batch_size=batch_size, pad_id=0)
        assert stats.n_tokens == sum(len(s) for s in sequences)
        assert stats.block_influence == pytest.approx(bi, abs=2e-5)
        for (start, n), d in angular.items():
            assert stats.angular(start, n) == pytest.approx(d, abs=2e-4), (start, n)


def test_hf_last_hidden_state_is_after_the_final_norm_so_hooks_are_used():
    model, tokenizer = make_tiny_model("llama"), make_tiny_tokenizer()
    # A unit-weight RMSNorm only rescales each token, which no cosine sees; a trained one does.
    torch.manual_seed(0)
    model.model.norm.weight.data.uniform_(0.2, 3.0)
    ids = list(truncate_texts(tokenizer, TEXTS[:1], max_length=64)[0])
    with torch.no_grad():
        normed = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
    raw = reference_states(model, ids)[-1]
    assert not torch.allclose(normed[0], raw, atol=1e-3)
    naive_bi = 1 - F.cosine_similarity(reference_states(model, ids)[-2], normed[0]).mean().item()
    stats = hidden_state_stats(model, [ids])
    assert stats.block_influence[-1] != pytest.approx(naive_bi, abs=1e-4)


def test_probing_a_dropped_model_keys_kept_layers_by_their_original_index():
    model, tokenizer = make_tiny_model("qwen2"), make_tiny_tokenizer()
    sequences = truncate_texts(tokenizer, TEXTS, max_length=64)
    stats = hidden_state_stats(model, sequences, DropSet((1, 4)))
    assert stats.num_layers == 4
    kept = DropSet((1, 4)).kept(6)
    bi = block_influence_metrics(stats, kept)
    assert sorted(bi) == sorted(block_influence_key(i) for i in (0, 2, 3, 5))
    angular = angular_distance_metrics(stats, kept)
    assert len(angular) == 4 * 5 // 2
    assert angular[angular_distance_key(2, 2)] == stats.angular(1, 2)  # layers 2, 3
    assert len(model.model.layers) == 6  # restored


def test_truncation_and_too_short_texts():
    tokenizer = make_tiny_tokenizer()
    sequences = truncate_texts(tokenizer, ["abcdefgh", "x", ""], max_length=5)
    assert [len(s) for s in sequences] == [5]  # "x" + no BOS is one token; "" none


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> ProbeRunner:
    corpus = tmp_path_factory.mktemp("text") / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "{t}"}}\n' for t in TEXTS))
    text = {"source": "file", "path": str(corpus), "column": "text", "limit": None,
            "max_length": 16, "stride": 8}  # fmt: skip
    return ProbeRunner(make_tiny_model("llama"), make_tiny_tokenizer(), text, batch_size=2)


def test_runner_perplexity_is_the_perplexity_module_on_the_same_windows(runner):
    obs = runner(Candidate(DropSet((2,)), PERPLEXITY))
    prepared = prepare_text(runner.tokenizer, TEXTS, max_length=16, stride=8)
    direct = evaluate_perplexity(runner.model, prepared, DropSet((2,)), batch_size=3)
    assert obs.score == pytest.approx(-direct.perplexity, rel=1e-5)
    assert obs.metrics["perplexity"] == pytest.approx(direct.perplexity, rel=1e-5)


def test_runner_hidden_state_probes_feed_the_one_shot_searchers(runner):
    bi_obs = runner(Candidate(DropSet(), BLOCK_INFLUENCE))
    stats = hidden_state_stats(runner.model, runner.sequences)
    assert [bi_obs.metrics[block_influence_key(i)] for i in range(6)] == pytest.approx(
        stats.block_influence
    )
    searcher = BlockInfluence(6, n_drop=2)
    searcher.observe([bi_obs])
    lowest = sorted(range(6), key=lambda i: (stats.block_influence[i], i))
    assert [set(c.drop) for c in searcher.propose()[1:]] == [set(lowest[:1]), set(lowest[:2])]

    ad_obs = runner(Candidate(DropSet(), ANGULAR_DISTANCE))
    assert len([k for k in ad_obs.metrics if k.startswith("angular.")]) == 6 * 7 // 2
    searcher = AngularDistance(6, n_drop=3)
    searcher.observe([ad_obs])
    block = searcher.propose()[-1].drop
    best = min(range(4), key=lambda s: (stats.angular(s, 3), s))
    assert block.layers == (best, best + 1, best + 2)


def test_runner_texts_are_prepared_once(runner, monkeypatch):
    runner(Candidate(DropSet(), PERPLEXITY))
    monkeypatch.setattr(
        "tale_opt.evaluation.probes.load_probe_texts",
        lambda *a, **k: pytest.fail("texts loaded twice"),
    )
    runner(Candidate(DropSet((0,)), PERPLEXITY))
    runner(Candidate(DropSet(), BLOCK_INFLUENCE))


def test_task_text_needs_the_task(tmp_path: Path):
    from tale_opt.errors import UsageError

    bad = ProbeRunner(
        make_tiny_model("llama"), make_tiny_tokenizer(), {"source": "task", "limit": None,
        "max_length": 16, "stride": 8},
    )  # fmt: skip
    with pytest.raises(UsageError, match="source: task"):
        bad(Candidate(DropSet(), PERPLEXITY))
