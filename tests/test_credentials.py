"""Masking passwords (tale_opt.credentials) and the run-directory rules
(tale_opt.commands.run_dirs)."""

from __future__ import annotations

import pytest

from tale_opt.commands.run_dirs import discard_if_bare, fresh_dir
from tale_opt.credentials import has_secret, mask, mask_values
from tale_opt.tracking.settings import redact


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        # A raw "@" in the password: the last "@" separates it from the host.
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql+psycopg2://u:a/b:c@h/db", "postgresql+psycopg2://u:***@h/db"),
        ("postgresql://u:p w@h/db", "postgresql://u:***@h/db"),
        ("https://u:tok@mlflow:5000/x", "https://u:***@mlflow:5000/x"),
        ("storage.url=postgresql://u:p@ss@h/db", "storage.url=postgresql://u:***@h/db"),
        ("postgresql://h/db?user=u&password=pw&x=1", "postgresql://h/db?user=u&password=***&x=1"),
        ("http://h:5000/api?token=abc", "http://h:5000/api?token=***"),
        # As Hydra prints a sweep's overrides.
        (
            r"storage.url=postgresql\://u\:pw@h\:5432/db",
            r"storage.url=postgresql\://u\:***@h\:5432/db",
        ),
        # Nothing secret: unchanged.
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:////data/a@b/mlflow.db", "sqlite:////data/a@b/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("outputs/tale_opt.db", "outputs/tale_opt.db"),
    ],
)
def test_mask_hides_every_part_of_a_password(text, masked):
    assert mask(text) == masked
    assert redact(text) == masked  # what tracking messages use


def test_mask_values_masks_a_whole_config_tree():
    cfg = {
        "storage": {"kind": "postgres", "url": "postgresql://u:s3cret@h/db", "retries": 3},
        "overrides": ["seed=0", "tracking.uri=postgresql://u:other@h/m"],
        "nested": ({"x": "https://a:b@c"},),
        "n": None,
    }
    masked = mask_values(cfg)
    assert (
        "s3cret" not in repr(masked) and "other" not in repr(masked) and ":b@" not in repr(masked)
    )
    assert masked["storage"]["retries"] == 3 and masked["n"] is None
    assert masked["overrides"][0] == "seed=0" and isinstance(masked["nested"], tuple)
    assert cfg["storage"]["url"] == "postgresql://u:s3cret@h/db", "the input is not changed"
    assert has_secret(cfg) and not has_secret(masked)


def test_log_records_of_any_logger_are_masked(caplog):
    import logging

    from tale_opt.credentials import install_log_masking

    install_log_masking()
    install_log_masking()  # idempotent
    with caplog.at_level(logging.INFO):
        logging.getLogger("hydra.some.launcher").info("#0 : %s", "url=postgresql://u:pw@h/db")
        logging.getLogger("tale_opt").info("no secret: %d%%", 5)
    assert caplog.messages == ["#0 : url=postgresql://u:***@h/db", "no secret: 5%"]


def test_fresh_dir_never_hands_out_an_existing_directory(tmp_path, monkeypatch):
    from tale_opt.commands import run_dirs

    monkeypatch.setattr(run_dirs, "_made", {})
    first = fresh_dir(str(tmp_path / "day" / "10-00-00_task"))
    assert first == str(tmp_path / "day" / "10-00-00_task")
    assert fresh_dir(str(tmp_path / "day" / "10-00-00_task")) == first, "stable in a process"
    run_dirs._made.clear()  # another process, the same second
    assert fresh_dir(str(tmp_path / "day" / "10-00-00_task")) == f"{first}_2"
    run_dirs._made.clear()
    assert fresh_dir(str(tmp_path / "day" / "10-00-00_task")) == f"{first}_3"


def test_a_run_directory_is_discarded_only_when_it_holds_nothing_but_hydra_files(tmp_path):
    bare = tmp_path / "bare"
    (bare / ".hydra").mkdir(parents=True)
    (bare / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (bare / "tale_opt.log").write_text("[INFO] loading\n")
    assert discard_if_bare(bare, log_name="tale_opt.log")
    assert not bare.exists()

    for extra in ("candidate_results.csv", "notes.txt", "other.log"):
        kept = tmp_path / f"kept_{extra}"
        (kept / ".hydra").mkdir(parents=True)
        (kept / "tale_opt.log").write_text("")
        (kept / extra).write_text("mine\n")
        assert not discard_if_bare(kept, log_name="tale_opt.log")
        assert (kept / extra).is_file() and (kept / ".hydra").is_dir()
    assert not discard_if_bare(tmp_path / "missing", log_name="tale_opt.log")
