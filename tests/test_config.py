"""The configs as Hydra composes them: every option of every group composes and validates;
user config directories work; bad values are one line naming key, value and expected type."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import searchers
from tale_opt import validate
from tale_opt.commands.config import (
    GROUPS,
    ConfigSource,
    compose,
    group_options,
    repository,
)
from tale_opt.commands.search import precheck
from tale_opt.errors import ConfigValueError, UsageError

ROOT = Path(__file__).resolve().parent.parent


def options_of(group: str) -> list[str]:
    source = ConfigSource()
    with repository(source) as loader:
        return group_options(loader, source, group)


# -- the shared value checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: validate.integer(True, "workers", minimum=0), "workers must be an integer >= 0"),
        (lambda: validate.integer(1.0, "seed"), "seed must be an integer, but got 1.0"),
        (
            lambda: validate.integer(-1, "max_drop", minimum=1, allow_none=True),
            "max_drop must be an integer >= 1 or null, but got -1",
        ),
        (
            lambda: validate.number("abc", "searcher.epsilon", minimum=0),
            "searcher.epsilon must be a number >= 0, but got 'abc' (str)",
        ),
        (lambda: validate.number(0, "ae_hm_lambda", above=0), "ae_hm_lambda must be a number > 0"),
        (lambda: validate.number(False, "x"), "x must be a number, but got False"),
        (lambda: validate.boolean(1, "eval.early_stop"), "eval.early_stop must be true or false"),
        (
            lambda: validate.known_keys({"prompt_tokenz": 1}, ["prompt_tokens"], "latency"),
            "latency has no option 'prompt_tokenz'. Did you mean 'prompt_tokens'?",
        ),
    ],
)
def test_shared_checks_name_key_value_and_expected_type(call, message):
    with pytest.raises(ConfigValueError) as caught:
        call()
    assert message in str(caught.value) and "\n" not in str(caught.value)
    # Bad input for the CLI (exit 2) and a ValueError for code that validates arguments.
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, ValueError)


def test_shared_checks_return_good_values():
    assert validate.integer(3, "k", minimum=1) == 3
    assert validate.integer(None, "k", allow_none=True) is None
    assert validate.number(2, "lam", above=0) == 2.0 and validate.boolean(False, "b") is False


# -- searcher options: bound to the signature, typed by its annotations ----------------------


def searcher_node(**options):
    node = OmegaConf.to_container(compose(["searcher=tale"]), resolve=True)["searcher"]
    return {**node, **options}


def test_a_negative_max_drop_names_its_own_bound_not_a_layer_count():
    from tale_opt.pipeline.plan import check_searcher_options

    with pytest.raises(UsageError) as caught:
        check_searcher_options(searcher_node(max_drop=-1))
    assert str(caught.value) == "searcher.max_drop must be an integer >= 1 or null, but got -1"


def test_a_searcher_option_of_the_wrong_type_is_one_line():
    from tale_opt.pipeline.plan import check_searcher_options

    with pytest.raises(UsageError) as caught:
        check_searcher_options(searcher_node(epsilon="abc"))
    assert str(caught.value) == "searcher.epsilon must be a number, but got 'abc' (str)"
    with pytest.raises(UsageError, match=r"searcher.protected must be a list"):
        check_searcher_options(searcher_node(protected=3))


def test_an_unknown_searcher_option_suggests_the_closest():
    from tale_opt.pipeline.plan import check_searcher_options

    with pytest.raises(
        UsageError, match="searcher 'tale' has no option 'epsilonn'. Did you mean 'epsilon'?"
    ):
        check_searcher_options(searcher_node(epsilonn=0.1))


def test_a_search_builds_its_searcher_once(tiny_model_dir, tmp_path, monkeypatch):
    """The options are checked without a searcher; the one built has the real layer count."""
    from tale_opt.pipeline.plan import plan_search

    built: list[int] = []
    original = searchers.GreedyElimination.__init__

    @functools.wraps(original)  # keeps the signature the options are bound to
    def counted(self, num_layers, **options):
        built.append(num_layers)
        original(self, num_layers, **options)

    monkeypatch.setattr(searchers.GreedyElimination, "__init__", counted)
    cfg = compose(
        [f"model.path={tiny_model_dir}", "n_opt=4", "n_eval=4", "tracking=none",
         f"storage.path={tmp_path / 'trials.db'}"]
    )  # fmt: skip
    plan = plan_search(OmegaConf.to_container(cfg, resolve=True))
    assert built == [plan.num_layers] == [4]
    assert plan.config["probe"] == "task_accuracy"


# -- every group option composes and validates ----------------------------------------------


# The groups of the search's own config; `finetune` belongs to finetune_job and pipeline.
SEARCH_GROUPS = [g for g in GROUPS if g != "finetune"]


def group_cases() -> list[list[str]]:
    cases = []
    for group in SEARCH_GROUPS:
        for option in options_of(group):
            prefix = "+" if group == "experiment" else ""
            cases.append([f"{prefix}{group}={option}"])
    return cases


def test_every_group_has_options():
    for group in GROUPS:
        assert options_of(group), group


@pytest.mark.parametrize("overrides", group_cases(), ids=lambda o: o[0])
def test_every_shipped_option_composes_and_validates(overrides, monkeypatch):
    from tale_opt.model.loading import ModelSpec
    from tale_opt.pipeline.plan import check_config
    from tale_opt.tasks.registry import build_task

    # storage=postgres reads its URL from here when storage.url is null (as shipped).
    monkeypatch.setenv("TALE_OPT_STORAGE_URL", "postgresql://u@127.0.0.1:5432/db")
    # One-shot searchers need a layer count to drop (the top-level n_drop).
    cfg = OmegaConf.to_container(compose([*overrides, "n_drop=2"]), resolve=True)
    checked = check_config(cfg)
    build_task(cfg["task"])
    ModelSpec(**checked.config["model"])
    if overrides == ["+experiment=paper"]:
        assert cfg["n_opt"] == 500 and cfg["searcher"]["max_drop"] is None
        assert cfg["eval"]["scoring"] == "generate"


@pytest.mark.parametrize("config_name", ["finetune_job", "pipeline"])
@pytest.mark.parametrize("option", options_of("finetune"))
def test_every_finetune_option_composes_and_validates(option, config_name):
    from tale_opt.finetune.settings import FinetuneSettings

    source = ConfigSource(config_name=config_name)
    cfg = OmegaConf.to_container(compose([f"finetune={option}"], source), resolve=True)
    settings = FinetuneSettings.from_mapping(cfg["finetune"])
    assert settings.rank >= 1


@pytest.mark.parametrize("storage", options_of("storage"))
def test_the_worker_config_composes_with_every_storage(storage, monkeypatch):
    from tale_opt.coordination.storage import StorageConfig

    monkeypatch.setenv("TALE_OPT_STORAGE_URL", "postgresql://u@127.0.0.1:5432/db")
    source = ConfigSource(config_name="worker")
    cfg = OmegaConf.to_container(compose([f"storage={storage}", "study=s"], source), resolve=True)
    assert cfg["study"] == "s"
    assert StorageConfig.from_mapping(cfg["storage"]).kind == storage


# -- errors of composing: one line, with a suggestion -----------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["n_opts=8"], "unknown config key 'n_opts'. Did you mean 'n_opt'?"),
        (["epsilon=0.1"], "unknown config key 'epsilon'. Did you mean 'searcher.epsilon'?"),
        (["searcher.min_keeps=2"], "Did you mean 'searcher.min_keep'?"),
        (["eval.batch_size=abc"], "`eval.batch_size` must be an integer, but got 'abc'"),
        (["storage.poll_interval=x"], "`storage.poll_interval` must be a number, but got 'x'"),
        (["pruner=paired", "pruner.delta=abc"], "`pruner.delta` must be a number, but got 'abc'"),
        (["pruner=pairs"], "unknown pruner 'pairs'. Did you mean 'paired'?"),
        (
            ["eval.early_stop=false"],
            "eval.early_stop was replaced by the pruner group: "
            "eval.early_stop=false is pruner=none",
        ),
        (["-m", "eval.early_stop=true,false"], "eval.early_stop=true is pruner=exact"),
        (["latency.repeats=3.5"], "`latency.repeats` must be an integer, but got '3.5'"),
        (["-m", "task=arc_easy,mmlux"], "unknown task 'mmlux'. Did you mean 'mmlu'?"),
    ],
)
def test_composition_errors_are_one_line(argv, message):
    # (eval.early_stop is refused by name, in a single run and a sweep alike.)
    with pytest.raises(UsageError) as caught:
        precheck(argv)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# -- the user's own config directory ----------------------------------------------------------


@pytest.fixture
def user_conf(tmp_path) -> Path:
    conf = tmp_path / "my_conf"
    (conf / "task").mkdir(parents=True)
    (conf / "task" / "my_task.yaml").write_text(
        "defaults:\n  - boolq\n  - _self_\n\nname: my_task\nn_opt: 16\n"
    )
    return conf


def test_a_task_of_the_users_config_dir_passes_the_checks(user_conf):
    for argv in (
        [f"--config-dir={user_conf}", "task=my_task"],
        ["--config-dir", str(user_conf), "task=my_task"],
        [f"hydra.searchpath=[file://{user_conf}]", "task=my_task"],
        ["-m", f"hydra.searchpath=[file://{user_conf}]", "task=my_task,boolq"],
    ):
        precheck(argv)
    with pytest.raises(UsageError, match="unknown task 'my_task'"):
        precheck(["task=my_task"])  # not on the search path: refused, as Hydra would
    with pytest.raises(UsageError, match="is not a directory"):
        precheck([f"--config-dir={user_conf / 'nope'}", "task=my_task"])


@pytest.mark.slow
@pytest.mark.parametrize("form", ["--config-dir", "hydra.searchpath"])
def test_the_command_line_composes_a_task_of_the_users_config_dir(form, user_conf, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = f"--config-dir={user_conf}" if form == "--config-dir" else (
        f"hydra.searchpath=[file://{user_conf}]"
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "tale_opt", where, "task=my_task", "--cfg", "job"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    task = OmegaConf.create(proc.stdout)["task"]
    assert task.name == "my_task" and task.n_opt == 16
