"""Real-data smoke: every shipped task, zero-shot and few-shot, on a handful of its packaged
examples through the packaged SmolLM2, as the app wires it (task scoring defaults, stop
strings, demonstrations); and two of them end to end through `python -m tale_opt`.

Decoding is capped at a few tokens: this checks that each task runs and scores, not what the
model knows (SmolLM2-135M is near chance on most of them)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402

from tale_opt.evaluation.evaluator import Evaluator  # noqa: E402
from tale_opt.evaluation.prompts import PromptEncoder  # noqa: E402
from tale_opt.tasks.registry import build_task, load_splits  # noqa: E402
from tests.test_cli import run_cli  # noqa: E402

pytestmark = pytest.mark.real_model
CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"
TASKS = (
    "arc_easy", "arc_challenge", "boolq", "commonsense_qa", "winogrande", "mmlu",
    "boolean_expressions", "gsm8k", "gsm8k_hard", "math500",
)  # fmt: skip
N_EXAMPLES = 3
MAX_NEW_TOKENS = 8


def task_cfg(name: str, k: int) -> dict[str, Any]:
    cfg = yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text())
    cfg["fewshot"] = {**cfg.get("fewshot", {}), "k": k}
    return cfg


@pytest.mark.parametrize("k", [0, 2], ids=["zero-shot", "2-shot"])
@pytest.mark.parametrize("name", TASKS)
def test_task_runs_on_real_data_with_smollm2(smollm2, name: str, k: int) -> None:
    model, tokenizer = smollm2
    cfg = task_cfg(name, k)
    task = build_task(cfg)
    examples = load_splits(cfg, seed=0).optimization[:N_EXAMPLES]
    scoring = cfg.get("scoring", {}).get("mode", "letters")
    evaluator = Evaluator(
        model, tokenizer, task, scoring=scoring, batch_size=N_EXAMPLES,
        max_new_tokens=min(MAX_NEW_TOKENS, cfg.get("scoring", {}).get("max_new_tokens", 1)),
    )  # fmt: skip
    prepared = evaluator.prepare(examples)
    result = evaluator.evaluate(prepared)
    assert result.n_examples == N_EXAMPLES and 0.0 <= result.accuracy <= 1.0
    if scoring == "letters":
        assert result.invalid_rate == 0.0
    else:
        assert all(p.gold == ex.answer for p, ex in zip(result.predictions, examples, strict=True))
    prompt = PromptEncoder(tokenizer).render(task.messages(examples[0]))
    if k:
        demo = examples[0].demos[0]
        assert task.user_turn(demo) in prompt and prompt.count("<|im_start|>user") == k + 1
    else:
        assert prompt.count("<|im_start|>user") == 1


def _protect_all_but(last: int, num_layers: int = 30) -> str:
    # Only the last `last` layers are candidates: a search round costs `last` evaluations.
    return "searcher.protected=[" + ",".join(str(i) for i in range(num_layers - last)) + "]"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("gsm8k_hard", ["task.fewshot.k=1", "eval.max_new_tokens=4"]),
        ("boolean_expressions", []),
    ],
)
def test_cli_search_runs_a_generative_task_end_to_end(name, extra, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(
        f"task={name}", "n_opt=3", "n_eval=3", "searcher.max_drop=1", "eval.batch_size=4",
        _protect_all_but(3), "latency=null", f"hydra.run.dir={run_dir}", *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["task"], summary["scoring"], summary["n_opt"]) == (name, "generate", 3)
    assert summary["timings"]["candidates"] == 4  # baseline + the 3 unprotected layers
    rows = (run_dir / "predictions" / "heldout_baseline.jsonl").read_text().splitlines()
    assert len(rows) == 3 and all("output" in json.loads(r) for r in rows)
