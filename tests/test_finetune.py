"""LoRA fine-tuning on tiny random-init models: training data disjoint from every split, the
loss on the answer only, training lowers the loss, the pruned layer count survives training
and merging, the merged export reloads with identical logits, and a killed training resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tale_opt.errors import UsageError
from tale_opt.finetune.data import (
    IGNORE_INDEX,
    SequenceCollator,
    encode_training,
    training_examples,
)
from tale_opt.finetune.lineage import Lineage, lineage_of
from tale_opt.finetune.lora import add_lora, load_pruned
from tale_opt.finetune.merge import merge_adapter
from tale_opt.finetune.settings import FinetuneSettings, TrainingData
from tale_opt.finetune.train import last_checkpoint, train
from tale_opt.model.loading import ModelSpec
from tale_opt.model.surgery import num_decoder_layers
from tale_opt.tasks.registry import build_task, load_splits
from tale_opt.types import DropSet

CONF = Path(__file__).resolve().parent.parent / "tale_opt" / "conf" / "finetune"


def cpu_settings(**overrides: Any) -> FinetuneSettings:
    node = yaml.safe_load((CONF / "cpu.yaml").read_text())
    data = {**node.pop("data"), **overrides.pop("data", {})}
    return FinetuneSettings.from_mapping({**node, **overrides, "data": data})


def sums_task(tmp_path: Path, n: int = 60, **extra: Any) -> dict[str, Any]:
    """A one-source multiple-choice task the character-level tiny tokenizer can spell."""
    rows = [
        {"id": f"q{i}", "question": f"What is {i} + 1?", "options": [str(i + 1), str(i + 2)],
         "gold": i % 2}
        for i in range(n)
    ]  # fmt: skip
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "name": "sums",
        "source": {"path": str(path)},
        "row_format": {"name": "choice_list", "choices": "options", "answer": "gold"},
        "prompt": {"system": None, "user": "Q: {question}\n{choices}"},
        "fewshot": {"k": 2},
        "n_opt": 8,
        "n_eval": 8,
        **extra,
    }


@pytest.fixture
def tiny_dir(tmp_path, tiny_model, tiny_tokenizer) -> Path:
    """A saved 6-layer random-init Llama with the character-level tokenizer."""
    directory = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_steps": 0}, "finetune.max_steps must be an integer >= 1 or null, but got 0"),
        ({"max_steps": None, "epochs": None}, "both null, so training has no length"),
        ({"epochs": 0, "max_steps": None}, "finetune.epochs must be a number > 0"),
        ({"rank": 0}, "finetune.rank must be an integer >= 1"),
        ({"target_modules": []}, "finetune.target_modules must be a non-empty list"),
        ({"lr_scheduler": "cosin"}, "Did you mean 'cosine'?"),
        ({"optimizer": "adam"}, "finetune.optimizer: unknown value 'adam'"),
        ({"quantization": "nf3"}, "Did you mean 'nf4'?"),
        ({"rnak": 8}, "finetune has no option 'rnak'. Did you mean 'rank'?"),
        ({"data": {"n_train": 0}}, "finetune.data.n_train must be an integer >= 1 or null"),
        ({"warmup": 2.5}, "a fraction of the steps in [0, 1) or a whole number"),
    ],
)
def test_bad_settings_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(UsageError) as err:
        cpu_settings(**overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_shipped_finetune_configs_are_valid():
    paper = yaml.safe_load((CONF / "paper_qlora.yaml").read_text())
    paper.pop("defaults")
    settings = cpu_settings(**paper)
    assert (settings.rank, settings.alpha, settings.dropout) == (64, 16, 0.1)
    assert (settings.quantization, settings.optimizer) == ("nf4", "paged_adamw_32bit")
    assert cpu_settings().max_steps == 100


# -- training data ----------------------------------------------------------------------------


def _content(task, examples) -> set[str]:
    return {task.content_key(e) for e in examples}


def test_training_examples_never_overlap_optimization_heldout_or_demos(tmp_path):
    cfg = sums_task(tmp_path)
    task = build_task(cfg)
    splits = load_splits(cfg, seed=3)
    drawn, info = training_examples(cfg, splits, 0, TrainingData(None, 256, False, None))
    parts = [splits.optimization, splits.evaluation, splits.fewshot]
    assert len(drawn) == 60 - 8 - 8 - 2 == info["n_train"]
    for part in parts:
        assert not {e.id for e in drawn} & {e.id for e in part}
        assert not _content(task, drawn) & _content(task, part)
    # Seeded, and drawing it leaves the search's splits as they were.
    again, _ = training_examples(
        cfg, load_splits(cfg, seed=3), 0, TrainingData(10, 256, False, None)
    )
    assert [e.id for e in again] == [e.id for e in training_examples(
        cfg, splits, 0, TrainingData(10, 256, False, None))[0]]  # fmt: skip
    assert load_splits(cfg, seed=3).fingerprint == splits.fingerprint


def test_a_training_source_loses_every_item_the_search_uses(tmp_path):
    """An item of the held-out split copied into the training file under another id is
    caught by content and left out."""
    cfg = sums_task(tmp_path)
    task = build_task(cfg)
    splits = load_splits(cfg, seed=0)
    leaked = splits.evaluation[0]
    extra = [
        {"id": f"x{i}", "question": f"What is {100 + i} + 1?",
         "options": [str(101 + i), str(102 + i)], "gold": 0}
        for i in range(5)
    ]  # fmt: skip
    copy = {"id": "renamed", "question": leaked.fields["question"],
            "options": list(leaked.choices), "gold": leaked.answer_index}  # fmt: skip
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in [*extra, copy]))
    drawn, info = training_examples(
        cfg, splits, 0, TrainingData(None, 256, False, {"path": str(source)})
    )
    assert sorted(e.id for e in drawn) == [f"x{i}" for i in range(5)]
    assert not _content(task, drawn) & _content(task, splits.evaluation)
    assert info["origin"] == "finetune.data.source"
    with pytest.raises(UsageError, match=r"finetune.data.n_train=6 but .* has only 5"):
        training_examples(cfg, splits, 0, TrainingData(6, 256, False, {"path": str(source)}))


def test_the_loss_falls_on_the_answer_only_in_the_evaluators_format(tmp_path, tiny_tokenizer):
    cfg = sums_task(tmp_path, scoring={"mode": "loglik"})
    task = build_task(cfg)
    example = load_splits(cfg, seed=0).optimization[0]
    [seq], too_long = encode_training(
        task, tiny_tokenizer, [example], scoring="loglik", chat_template=True, max_length=512
    )
    from tale_opt.evaluation.prompts import PromptEncoder

    prompt = PromptEncoder(tiny_tokenizer, chat_template=True).encode(task.messages(example))
    gold = tiny_tokenizer.encode(
        task.continuations(example)[example.answer_index], add_special_tokens=False
    )
    assert too_long == 0
    assert list(seq.input_ids) == prompt + gold
    assert list(seq.labels) == [IGNORE_INDEX] * len(prompt) + gold
    batch = SequenceCollator(pad_id=0)([seq, seq.__class__("x", (5, 6), (IGNORE_INDEX, 6))])
    assert batch["labels"][1].tolist()[2:] == [IGNORE_INDEX] * (len(prompt) + len(gold) - 2)
    assert batch["attention_mask"][1].sum() == 2


# -- training, merge, export ------------------------------------------------------------------


def _sequences(tmp_path: Path, tokenizer: Any) -> list:
    cfg = sums_task(tmp_path, n=40)
    task = build_task(cfg)
    splits = load_splits(cfg, seed=0)
    drawn, _ = training_examples(cfg, splits, 0, TrainingData(None, 256, False, None))
    sequences, _ = encode_training(
        task, tokenizer, drawn, scoring="letters", chat_template=False, max_length=256
    )
    return sequences


def test_training_lowers_the_loss_and_keeps_the_pruned_layer_count_through_merge(
    tmp_path, tiny_dir
):
    drop = DropSet.of([1, 4])
    spec = ModelSpec(path=str(tiny_dir), dtype="float32", device="cpu")
    settings = cpu_settings(max_steps=30, learning_rate=1e-2, logging_steps=5, save_steps=30)
    model, tokenizer = load_pruned(spec, drop, "float32")
    assert num_decoder_layers(model) == 4
    peft_model = add_lora(model, settings)
    outcome = train(peft_model, _sequences(tmp_path, tokenizer), tokenizer.pad_token_id,
                    settings, tmp_path / "ft", use_cpu=True)  # fmt: skip
    losses = [h["loss"] for h in outcome.history]
    assert outcome.global_step == 30 and len(losses) >= 5
    assert losses[-1] < 0.8 * losses[0], losses
    assert num_decoder_layers(peft_model.get_base_model()) == 4
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    peft_model.eval()
    probe = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        trained_logits = peft_model(input_ids=probe).logits

    merged = merge_adapter(
        spec, drop, tmp_path / "adapter", tmp_path / "merged",
        lineage=Lineage(6, tuple(range(6))).then_drop(drop), dtype="float32", metadata={},
    )  # fmt: skip
    assert num_decoder_layers(merged.model) == 4 and merged.model.config.num_hidden_layers == 4
    with torch.no_grad():  # merging folds the adapter in: the same function as before
        assert torch.allclose(merged.model(input_ids=probe).logits, trained_logits, atol=1e-5)
    # The export reloads with plain transformers and gives identical logits.
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32).eval()
    assert reloaded.config.num_hidden_layers == 4 and merged.max_logit_diff == 0.0
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=probe).logits, merged.model(input_ids=probe).logits)
    meta = json.loads((merged.path / "tale_opt_export.json").read_text())
    assert meta["dropped_layers"] == [1, 4] and meta["kept_layers"] == [0, 2, 3, 5]
    # Pruning the merged checkpoint again is reported in the original numbering.
    assert lineage_of(str(merged.path), 4).then_drop(DropSet.of([2])).dropped.layers == (1, 3, 4)


def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path, tiny_dir):
    spec = ModelSpec(path=str(tiny_dir), dtype="float32", device="cpu")
    settings = cpu_settings(max_steps=6, logging_steps=1, save_steps=2)
    out = tmp_path / "ft"

    def killer(step: int, logs: dict) -> None:
        if step == 3 and "loss" in logs:
            raise KeyboardInterrupt  # what a kill looks like from inside the loop

    model, tokenizer = load_pruned(spec, DropSet.of([0]), "float32")
    sequences = _sequences(tmp_path, tokenizer)
    with pytest.raises(KeyboardInterrupt):
        train(add_lora(model, settings), sequences, tokenizer.pad_token_id, settings, out,
              use_cpu=True, on_log=killer)  # fmt: skip
    assert last_checkpoint(out).endswith("checkpoint-2")

    model, tokenizer = load_pruned(spec, DropSet.of([0]), "float32")
    outcome = train(add_lora(model, settings), sequences, tokenizer.pad_token_id, settings, out,
                    use_cpu=True)  # fmt: skip
    assert outcome.resumed_from.endswith("checkpoint-2")
    assert outcome.global_step == 6
    assert [h["step"] for h in outcome.history] == [1, 2, 3, 4, 5, 6]


def test_an_unknown_target_module_names_the_ones_there_are(tiny_model):
    from tale_opt.finetune.lora import check_target_modules

    with pytest.raises(UsageError) as err:
        check_target_modules(tiny_model("llama"), ("q_prj", "v_proj"))
    assert "no linear layer named 'q_prj'. Did you mean 'q_proj'?" in str(err.value)
    assert "down_proj" in str(err.value)


def test_a_pick_that_repeats_an_earlier_drop_set_reads_that_picks_predictions(tmp_path):
    """A search writes held-out predictions once per distinct configuration: a Best that drops
    nothing shares the Baseline's file."""
    from tale_opt.finetune.heldout import search_predictions_file

    (tmp_path / "predictions").mkdir()
    for name in ("baseline", "final"):
        (tmp_path / "predictions" / f"heldout_{name}.jsonl").write_text("{}\n")
    summary = {
        "baseline": {"drop_layers": []},
        "best": {"drop_layers": []},
        "final": {"drop_layers": [21]},
    }
    find = search_predictions_file
    assert find(tmp_path, summary, "best") == tmp_path / "predictions" / "heldout_baseline.jsonl"
    assert find(tmp_path, summary, "final") == tmp_path / "predictions" / "heldout_final.jsonl"
    assert find(tmp_path, {"ae_hm": {"drop_layers": [3]}}, "ae_hm") is None
