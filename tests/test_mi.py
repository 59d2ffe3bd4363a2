"""Mutual information per layer (`python -m tale_opt analyze mi`): both estimators on synthetic
data whose mutual information is known, the layer outputs they read, and the command on a tiny
model.

Tolerances (bits, on 700 training / 300 held-out pairs, fixed seeds):

* a label that is a deterministic function of X (I = H(Y) = ~1.93 bits): the linear probe
  within 0.15 below H(Y) (the label is linear in X; L2 strengths down to 0.001); MINE within
  0.45 below (its Donsker-Varadhan bound needs T to saturate, and stops early on few pairs;
  measured 0.3 below) -- neither above H(Y) by more than 0.05;
* X and Y independent (I = 0): both within 0.05 of 0;
* correlated Gaussians, 2 dimensions with correlation 0.8 per dimension (I = -log2(1 - 0.64)
  = 1.474 bits): MINE within 0.3 below (measured 1.30) and at most 0.05 above.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tale_opt.analysis.estimators import MineSettings, entropy_bits, mine_bits, probe_bits
from tale_opt.analysis.mi import build_pairs, held_out_mask, resolve_target
from tale_opt.commands.analyze import analyze, build_plan
from tale_opt.errors import UsageError
from tale_opt.types import DropSet

N_TRAIN = 700
FAST = MineSettings(steps=400)


def split(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


@pytest.fixture
def one_thread_estimators(one_thread):
    torch.manual_seed(1)


def test_a_deterministic_label_carries_its_whole_entropy(one_thread_estimators):
    x = torch.randn(1000, 8)
    y = (x @ torch.randn(8, 4)).argmax(1)  # Y is a function of X: I(X; Y) = H(Y)
    x_train, y_train, x_test, y_test = split(x, y)
    entropy = entropy_bits(y_test)
    [mine] = mine_bits(x_train, y_train, x_test, y_test, FAST, seed=0, n_classes=4)
    grid = (0.001, 0.01, 0.1, 1.0)  # a separable label: weak penalties are the right ones
    [probe] = probe_bits(x_train, y_train, x_test, y_test, n_classes=4, l2_grid=grid)
    assert entropy > 1.8
    assert entropy - 0.15 <= probe.bound <= entropy + 0.05
    assert probe.entropy == entropy and probe.cross_entropy >= 0
    assert entropy - 0.45 <= mine <= entropy + 0.05


def test_an_independent_label_carries_nothing(one_thread_estimators):
    x = torch.randn(1000, 8)
    y = torch.randint(0, 4, (1000,))
    x_train, y_train, x_test, y_test = split(x, y)
    [mine] = mine_bits(x_train, y_train, x_test, y_test, FAST, seed=0, n_classes=4)
    [probe] = probe_bits(x_train, y_train, x_test, y_test, n_classes=4)
    assert abs(mine) < 0.05
    assert abs(probe.bound) < 0.05
    assert probe.l2 == 100.0  # cross-validation picks the strongest penalty: nothing to learn


def test_mine_on_correlated_gaussians(one_thread_estimators):
    rho, dims = 0.8, 2
    x = torch.randn(1000, dims)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(1000, dims)
    truth = -dims / 2 * math.log2(1 - rho**2)
    [mine] = mine_bits(*split(x, y), FAST, seed=0)
    assert truth - 0.3 <= mine <= truth + 0.05


def test_representations_are_estimated_together_as_alone(one_thread_estimators):
    """Batched fits (all layers of one seed at once) give each representation its own result."""
    x = torch.randn(2, 1000, 8)
    y = (x[0] @ torch.randn(8, 3)).argmax(1)  # informative for the first, not the second
    x_train, x_test = x[:, :N_TRAIN], x[:, N_TRAIN:]
    together = probe_bits(x_train, y[:N_TRAIN], x_test, y[N_TRAIN:], n_classes=3)
    for r in range(2):
        [alone] = probe_bits(x_train[r], y[:N_TRAIN], x_test[r], y[N_TRAIN:], n_classes=3)
        assert together[r].bound == pytest.approx(alone.bound, abs=2e-3)
        assert together[r].l2 == alone.l2
    mine = mine_bits(x_train, y[:N_TRAIN], x_test, y[N_TRAIN:], FAST, seed=0, n_classes=3)
    assert mine[0] > 1.0 and abs(mine[1]) < 0.05


def test_the_option_that_is_right_read_from_every_options_representation(one_thread_estimators):
    """``per_option``: X holds one representation per option, Y is the index of the right one;
    here Y is the option whose first feature is largest, a function of X (I = H(Y))."""
    x = torch.randn(1000, 4, 6)
    y = x[..., 0].argmax(1)
    x_train, x_test, y_train, y_test = x[:N_TRAIN], x[N_TRAIN:], y[:N_TRAIN], y[N_TRAIN:]
    entropy = entropy_bits(y_test)
    options = {"n_classes": 4, "per_option": True}
    [probe] = probe_bits(x_train, y_train, x_test, y_test, l2_grid=(0.001, 0.01), **options)
    [mine] = mine_bits(x_train, y_train, x_test, y_test, FAST, seed=0, **options)
    assert entropy > 1.9
    assert entropy - 0.15 <= probe.bound <= entropy + 0.05
    assert entropy - 0.25 <= mine <= entropy + 0.05  # measured 1.90 of 2.00
    shuffled = y[torch.randperm(1000)]  # the same X, an unrelated Y
    [probe] = probe_bits(x_train, shuffled[:N_TRAIN], x_test, shuffled[N_TRAIN:], **options)
    [mine] = mine_bits(x_train, shuffled[:N_TRAIN], x_test, shuffled[N_TRAIN:], FAST, **options)
    assert abs(probe.bound) < 0.05 and abs(mine) < 0.05


def test_held_out_questions_are_a_seeded_share():
    held = held_out_mask(10, 0.3, seed=0)
    assert int(held.sum()) == 3
    assert held_out_mask(10, 0.3, seed=0).equal(held)
    assert not held_out_mask(10, 0.3, seed=1).equal(held)
    assert int(held_out_mask(2, 0.9, seed=0).sum()) == 1  # one question on each side


@pytest.fixture(scope="module")
def arc_prepared(smollm2):
    """The first 6 held-out ARC-Easy cloze questions, prepared as the evaluator does (real
    prompts, SmolLM2's tokenizer), zero-shot."""
    from tale_opt.commands.config import compose
    from tale_opt.evaluation.evaluator import Evaluator
    from tale_opt.tasks.registry import build_task, load_splits

    model, tokenizer = smollm2
    cfg = compose(["task=arc_easy_cloze", "task.fewshot.k=0"])
    task_cfg = dict(cfg.task)
    splits = load_splits(task_cfg, seed=0, n_opt=8, n_eval=6)
    evaluator = Evaluator(model, tokenizer, build_task(task_cfg), scoring="loglik",
                          chat_template=False)  # fmt: skip
    return evaluator.prepare(splits.evaluation)


def test_choice_samples_are_each_questions_options_with_the_gold_index(arc_prepared):
    pairs = build_pairs(arc_prepared, "choice")
    assert resolve_target("auto", "loglik") == "choice"
    assert resolve_target("auto", "letters") == "label"
    assert pairs.options == 4 and pairs.n_classes == 4
    kept = [i for i, c in enumerate(arc_prepared.continuation_ids) if len(c) == 4]
    assert pairs.n_questions == len(kept) and pairs.left_out == len(arc_prepared) - len(kept)
    assert pairs.labels.tolist() == [arc_prepared.examples[i].answer_index for i in kept]
    assert len(pairs.sequences) == 4 * len(kept)
    for q, i in enumerate(kept):
        prompt = arc_prepared.row_prompt_ids[i]
        for j, continuation in enumerate(arc_prepared.continuation_ids[i]):
            assert pairs.sequences[4 * q + j] == (*prompt, *continuation)
    # States of the sequences, arranged per question and option.
    states = torch.arange(len(pairs.sequences) * 2, dtype=torch.float32).view(-1, 2)
    arranged = pairs.arrange(states)
    assert arranged.shape == (len(kept), 4, 2) and arranged[1, 2].equal(states[6])
    label = build_pairs(arc_prepared, "label")
    assert label.labels.tolist() == [e.answer_index for e in arc_prepared.examples]
    assert label.n_classes >= 2 and label.options == 1


@pytest.mark.parametrize("drop", [DropSet(), DropSet.of([1, 3])])
def test_last_token_states_are_each_layers_output(tiny_model, drop):
    from tale_opt.evaluation.representations import last_token_states
    from tale_opt.model.surgery import dropped_layers

    model = tiny_model("llama", num_hidden_layers=5)
    prefix = (5, 6, 7, 8)
    rows = [(9, 10, 11), (12,), (13, 14, 15, 16, 17, 18), (19, 20)]
    states = last_token_states(model, rows, drop, prefix=prefix, batch_size=3)
    kept = drop.kept(5)
    assert states.shape == (len(kept), len(rows), 32)
    with dropped_layers(model, drop), torch.no_grad():
        for i, row in enumerate(rows):
            out = model(torch.tensor([[*prefix, *row]]), output_hidden_states=True)
            # hidden_states[j + 1] is the output of kept layer j (the last one's is normed).
            for j in range(len(kept) - 1):
                expected = out.hidden_states[j + 1][0, -1]
                assert torch.allclose(states[j, i], expected, atol=1e-5), (i, j)


@pytest.fixture
def tiny_settings() -> list[str]:
    return ["model.name=tiny", "n_examples=16", "task.fewshot.k=0", "mi.seeds=2",
            "mi.mine.steps=30", "mi.l2_grid=[1.0,10.0]", "mi.features=8"]  # fmt: skip


def test_analyze_mi_writes_the_table_figure_and_record(tiny_model_dir, tmp_path, tiny_settings):
    plan = build_plan([f"model.path={tiny_model_dir}", "drop=[1]", f"out={tmp_path / 'mi'}",
                       *tiny_settings])  # fmt: skip
    path, table = analyze(plan)
    record = json.loads(path.read_text())
    assert {p.name for p in path.parent.iterdir()} == {"mi.json", "mi.md", "mi.png"}
    assert record["target"] == "choice" and record["n_questions"] + record["left_out"] == 16
    assert record["options"] == 4 and record["label_entropy_bits"] > 1.0
    full, pick = record["configurations"]
    assert [row["layer"] for row in full["layers"]] == [0, 1, 2, 3]
    assert pick["drop_layers"] == [1] and [row["layer"] for row in pick["layers"]] == [0, 2, 3]
    for row in full["layers"] + pick["layers"]:
        for key in ("mine", "probe"):
            assert len(row[key]["seeds"]) == 2 and row[key]["sd"] >= 0
            assert row[key]["mean"] <= record["label_entropy_bits"] + 0.05
    assert "| 1 |" in table and "dropped" in table and "H(Y) =" in table
    assert "compared within the question" in table
    assert (path.parent / "mi.png").stat().st_size > 10_000
    # out= holding an analysis is refused.
    with pytest.raises(UsageError, match="already holds an analysis"):
        build_plan([f"model.path={tiny_model_dir}", f"out={tmp_path / 'mi'}", *tiny_settings])


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["mi.target=answer"], "mi.target must be one of auto, label, choice"),
        (["mi.mine.steps=0"], "`mine.steps >= 1` must hold"),
        (["mi.test_fraction=1.5"], "mi.test_fraction must be below 1"),
        (["+mi.bogus=1"], "mi has no option 'bogus'"),
        (["pick=final"], "give run=DIR too"),
        (["run=/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_settings_are_refused_before_any_model_loads(overrides, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace("`", "`")):
        build_plan(overrides)


def test_analyze_needs_the_analysis_name(capsys):
    from tale_opt.commands.analyze import main

    with pytest.raises(SystemExit) as exit_info:
        main(["model=smollm2"])
    assert exit_info.value.code == 2
    assert "analyze needs the analysis to run, e.g. `analyze mi ...`" in capsys.readouterr().err
    main(["mi", "--help"])
    assert "python -m tale_opt analyze mi run=" in capsys.readouterr().out


@pytest.mark.slow
def test_analyze_a_searchs_pick(tiny_model_dir, tmp_path, tiny_settings):
    """run= reads the search's model, task, evaluator options and seed, and its pick."""
    from tests.test_cli import run_cli

    proc = run_cli(
        f"model.path={tiny_model_dir}", "model.name=tiny", "n_opt=8", "n_eval=8", "n_drop=1",
        "task.fewshot.k=0", "latency=null", "tracking=none", f"hydra.run.dir={tmp_path / 'run'}",
        f"storage.path={tmp_path / 'trials.db'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    settings = [s for s in tiny_settings if not s.startswith(("model.", "task."))]
    plan = build_plan([f"run={tmp_path / 'run'}", "pick=final", f"out={tmp_path / 'mi'}",
                       *settings])  # fmt: skip
    assert list(plan.drop.layers) == summary["final"]["drop_layers"]
    assert plan.task["fewshot"]["k"] == 0 and plan.seed == 0 and plan.n_opt == 8
    path, _ = analyze(plan)
    record = json.loads(path.read_text())
    assert record["configurations"][1]["label"].startswith("TALE final")
    assert record["run"] == str((tmp_path / "run").resolve())
    with pytest.raises(UsageError, match="comes from the search"):
        build_plan([f"run={tmp_path / 'run'}", "task=boolq"])
    with pytest.raises(UsageError, match="pick must be one of"):
        build_plan([f"run={tmp_path / 'run'}", "pick=baseline"])
