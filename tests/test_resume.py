"""Interrupted training resumes from its last finished epoch and ends exactly where an uninterrupted run ends."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys

from types import SimpleNamespace

import pytest
import yaml

from stages import train as train_stage
from stages.params import load_params
from tests.conftest import ROOT, digits_project, module_env, run_module

TIMING = {"seconds", "wall_seconds", "seconds_per_epoch"}  # wall-clock values: the only fields that may differ


def project(path, epochs=6):
    return digits_project(path, epochs=epochs, batch_size=64)


def results(repo, norm="bn"):
    """Metrics and per-epoch log without the wall-clock fields."""
    metrics = json.loads((repo / f"metrics/train_{norm}.json").read_text())
    with open(repo / f"plots/train/{norm}.csv") as f:
        rows = [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]
    features = (repo / f"plots/features/{norm}.csv").read_text()  # no timing in it: compared byte for byte
    return {k: v for k, v in metrics.items() if k not in TIMING}, rows, features


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    repo = project(tmp_path_factory.mktemp("ref"))
    r = run_module(repo, "stages.train", "bn")
    assert r.returncode == 0, r.stderr
    return results(repo), (repo / "models/bn.pt").read_bytes()


def kill_after_epoch(repo, epoch: int, sig) -> None:
    """Start a real training process and send it `sig` once `epoch` epochs are logged."""
    # SIGINT back to its default in the child, as in a terminal: a non-interactive shell starts background jobs
    # with SIGINT ignored, and Python keeps an inherited "ignore" (then Ctrl-C could not reach it at all)
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "bn"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=module_env(repo),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith(f"bn epoch {epoch}/"):
            proc.send_signal(sig)
            break
    proc.wait(60)
    assert proc.returncode != 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_training_resumes_to_the_same_result(tmp_path, reference, sig):
    repo = project(tmp_path)
    kill_after_epoch(repo, 2, sig)
    assert not (repo / "models/bn.pt").exists() and not (repo / "metrics/train_bn.json").exists()
    # outputs are written under a temporary name and renamed: what exists under an output's name is complete
    with open(repo / "plots/train/bn.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1)) and rows
    assert all(v for r in rows for v in r.values())
    if sig != signal.SIGKILL:  # caught: the temporary file is removed too (SIGKILL can leave it behind)
        assert not list(repo.rglob(".*.tmp*"))
    r = run_module(repo, "stages.train", "bn")
    assert r.returncode == 0, r.stderr
    assert "resuming after epoch" in r.stdout
    assert results(repo) == reference[0]
    assert not (repo / "checkpoints/bn.pt").exists()


def test_changed_params_restart_instead_of_resuming(tmp_path):
    repo = project(tmp_path)
    kill_after_epoch(repo, 2, signal.SIGKILL)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] / 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = run_module(repo, "stages.train", "bn")
    assert r.returncode == 0, r.stderr
    assert "training from scratch" in r.stdout and "resuming" not in r.stdout
    assert [row["epoch"] for row in results(repo)[1]] == [str(e) for e in range(1, 7)]


def test_same_seed_gives_identical_outputs(tmp_path, reference):
    repo = project(tmp_path)
    assert run_module(repo, "stages.train", "bn").returncode == 0
    assert results(repo) == reference[0]
    assert (repo / "models/bn.pt").read_bytes() == reference[1]


def test_a_checkpoint_from_a_log_with_other_columns_is_not_resumed(monkeypatch):
    """A checkpoint carries the rows logged so far; rows without a column the log now writes cannot resume."""
    params, ds = load_params(ROOT / "params.yaml"), SimpleNamespace(meta={"md5": "0" * 32})
    now = train_stage.fingerprint(params, "bn", ds)
    monkeypatch.setattr(train_stage, "LOG_COLUMNS", [c for c in train_stage.LOG_COLUMNS if c != "train_size"])
    assert train_stage.fingerprint(params, "bn", ds) != now


def test_a_checkpoint_of_another_optimizer_is_not_resumed(monkeypatch):
    """Checkpoints written before OneCycleSGD hold torch.optim's state dicts, which it cannot load."""
    params, ds = load_params(ROOT / "params.yaml"), SimpleNamespace(meta={"md5": "0" * 32})
    now = train_stage.fingerprint(params, "bn", ds)
    monkeypatch.setattr(train_stage, "OneCycleSGD", type("OtherOptimizer", (), {}))
    assert train_stage.fingerprint(params, "bn", ds) != now
