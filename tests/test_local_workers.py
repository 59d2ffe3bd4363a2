"""`workers=N`: how local worker processes share the machine, and what happens if they die."""

from __future__ import annotations

import time

import pytest

from tale_opt.coordination.local_workers import LocalWorkers, worker_settings
from tale_opt.errors import SearchFailed
from tests.fake_search import exit_with


def test_cpu_workers_share_the_cores_and_see_no_gpu_assignment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    settings = worker_settings(2, "cpu", cores=8)
    assert [s["threads"] for s in settings] == [4, 4]
    assert all("CUDA_VISIBLE_DEVICES" not in s["env"] for s in settings)
    assert settings[0]["env"]["OMP_NUM_THREADS"] == "4"
    assert [s["threads"] for s in worker_settings(3, "cpu", cores=2)] == [1, 1, 1]
    assert [s["threads"] for s in worker_settings(2, "cpu", cores=8, threads=1)] == [1, 1]


def test_each_worker_gets_its_own_gpu_round_robin(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    gpus = [s["env"]["CUDA_VISIBLE_DEVICES"] for s in worker_settings(4, "auto")]
    assert gpus == ["3", "5", "7", "3"]
    # A pinned device (or one GPU) is left alone.
    assert all("CUDA_VISIBLE_DEVICES" not in s["env"] for s in worker_settings(2, "cuda:1"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert all("CUDA_VISIBLE_DEVICES" not in s["env"] for s in worker_settings(2, "cuda"))


@pytest.mark.slow
def test_the_coordinator_notices_when_every_local_worker_is_gone():
    workers = LocalWorkers(2, exit_with, {"code": 2}, device="cpu")
    workers.start()
    deadline = time.monotonic() + 1800  # only against a hang
    while any(code is None for code in workers.exit_codes()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(
        SearchFailed, match=r"all 2 local worker processes exited \(exit codes \[2, 2\]\)"
    ):
        workers.check()
    workers.stop(timeout=1)
