"""The batch-size study (scripts/batch_size_study.py): recipe scaling, fixed subset, and a real run on digits."""
import csv
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scripts import batch_size_study as B
from stages.params import load_params
from stages.trainer import Split
from tests.conftest import ROOT, digits_project, module_env, run_module


def test_lr_scales_linearly_with_batch_size_and_nothing_else_changes():
    params = load_params(ROOT / "params.yaml")
    cfg = B.scaled_recipe(params, 8, 3)
    assert cfg.lr == pytest.approx(params.train.lr * 8 / params.train.batch_size)
    assert cfg.muon_lr == pytest.approx(params.train.muon_lr * 8 / params.train.batch_size)
    assert (cfg.batch_size, cfg.epochs) == (8, 3)
    assert cfg.momentum == params.train.momentum and cfg.weight_decay == params.train.weight_decay
    assert cfg.label_smoothing == params.train.label_smoothing and cfg.crop_pad == params.train.crop_pad


def test_subset_is_fixed_by_seed_and_checked():
    split = Split(torch.arange(100).view(100, 1, 1, 1).to(torch.uint8), torch.arange(100))
    a, b, c = B.subset(split, 30, 0), B.subset(split, 30, 0), B.subset(split, 30, 1)
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    assert len(a.y.unique()) == 30 and torch.equal(a.x.view(-1).long(), a.y)  # images stay with their labels
    with pytest.raises(ValueError, match="--train-images must be in 1..100, got 101"):
        B.subset(split, 101, 0)


def rows(errors: dict) -> list[dict]:
    return [{"norm": n, "batch_size": b, "test_error": e, "epochs": 2, "train_images": 100, "test_images": 50,
             "seed": 0, "lr": 0.4 * b / 512} for (n, b), e in errors.items()]


def test_table_has_one_row_per_norm_and_one_column_per_batch_size():
    md = B.markdown(rows({("bn", 2): 0.5, ("bn", 32): 0.25, ("gn", 2): 0.3, ("gn", 32): 0.3125}))
    assert "| norm | batch 2 | batch 32 |" in md
    assert "| bn | 50.00 | 25.00 |" in md and "| gn | 30.00 | 31.25 |" in md
    assert "lr = 0.00078125 x batch size" in md


def test_seeds_give_mean_and_sample_std():
    rs = rows({("ln", 8): 0.30}) + rows({("ln", 8): 0.34})
    rs[1]["seed"] = 1
    assert B.summarize(rs)[("ln", 8)] == pytest.approx((0.32, statistics.stdev([0.30, 0.34]), 2))
    assert "| ln | 32.00 ± 2.83 |" in B.markdown(rs) and "seeds 0, 1 (mean ± sample std)" in B.markdown(rs)


def test_finished_runs_of_the_same_recipe_are_reused_not_rerun():
    recipe = B.recipe_id(load_params(ROOT / "params.yaml"), 2, 100)
    done = [{**r, "recipe": recipe} for r in rows({("bn", 2): 0.5, ("gn", 2): 0.4})]
    calls = []
    got = B.run_study(["gn", "bn"], [2], [0], 2, 100, 1, 1, done, calls.append, ROOT / "params.yaml")
    assert [r["norm"] for r in got] == ["bn", "gn"] and calls == []  # no worker started, nothing rewritten
    assert B.recipe_id(load_params(ROOT / "params.yaml"), 3, 100) != recipe  # another epoch count: not reused


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "1", "8"], "--batch-sizes must each be in 2..--train-images (64)"),
    (["--batch-sizes", "128"], "--batch-sizes must each be in 2..--train-images (64)"),
    (["--epochs", "21"], "--epochs must be in 1..20, got 21"),
])
def test_bad_arguments_are_refused_by_name(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        B.main(["--train-images", "64", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_real_run_on_digits_writes_table_csv_and_plot(tmp_path):
    repo = digits_project(tmp_path / "proj")
    shutil.copytree(ROOT / "scripts", repo / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    # batch 4, not 2: digits are 8x8, so the last stages run at 1x1, where BN over a batch of 2 in bf16 diverges
    r = run_module(repo, "scripts.batch_size_study", "--epochs", "6", "--train-images", "256",
                   "--batch-sizes", "32", "4", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    with open(repo / "metrics/batch_size.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [(g["norm"], int(g["batch_size"])) for g in got] == [(n, b) for n in ("bn", "gn", "ln") for b in (4, 32)]
    recipe = load_params(repo / "params.yaml").train
    for g in got:
        assert float(g["lr"]) == pytest.approx(recipe.lr * int(g["batch_size"]) / recipe.batch_size)
        assert int(g["train_images"]) == 256 and int(g["test_images"]) > 0
        assert 0.0 <= float(g["test_error"]) < 0.8  # learned something in 6 epochs on 256 digits (chance: 0.9)
    assert "| bn |" in (repo / "metrics/batch_size.md").read_text()
    assert (repo / "plots/batch_size.png").stat().st_size > 10_000
    # a second seed later: only the new runs train, the first seed's rows are reused from the CSV
    r = run_module(repo, "scripts.batch_size_study", "--epochs", "6", "--train-images", "256",
                   "--batch-sizes", "32", "4", "--jobs", "2", "--seeds", "0", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("seed 1: test error") == 6 and "seed 0: test error" not in r.stdout
    with open(repo / "metrics/batch_size.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12
    assert "± " in (repo / "metrics/batch_size.md").read_text()


def state_and_parent(proc: Path) -> tuple[str, int] | None:
    """(state letter, parent pid) from /proc/<pid>/stat, or None once the process is gone. The fields follow
    the command name in parentheses, which may itself hold spaces or parentheses."""
    try:
        state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return None
    return state, int(ppid)


def alive(pid: int) -> bool:
    """Running and not a zombie (an ended child its new parent has not reaped yet)."""
    info = state_and_parent(Path("/proc") / str(pid))
    return info is not None and info[0] != "Z"


def workers_of(pid: int) -> list[int]:
    """Live processes whose parent is pid and that run a multiprocessing spawn worker."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or (info := state_and_parent(proc)) is None:
            continue
        try:
            spawned = b"spawn_main" in (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if info[1] == pid and info[0] != "Z" and spawned:
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux (/proc, prctl)")
def test_workers_end_when_the_study_is_killed(tmp_path):
    repo = digits_project(tmp_path / "proj")
    shutil.copytree(ROOT / "scripts", repo / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    # runs of 20 epochs at batch 2 on 1,000 digits (10,000 steps each, far longer than the test waits): the
    # workers are mid-run when the study is killed, so only a signal, not the end of a run, can stop them soon
    study = subprocess.Popen([sys.executable, "-m", "scripts.batch_size_study", "--epochs", "20", "--batch-sizes",
                              "2", "--train-images", "1000", "--jobs", "2"], cwd=repo, env=module_env(repo),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers := workers_of(study.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2, "the study did not start its 2 workers"
        time.sleep(5)  # into their first runs
        assert all(alive(w) for w in workers) and study.poll() is None, study.stderr.read().decode()
        study.send_signal(signal.SIGTERM)  # as `pkill -f`: only the main process gets it
        study.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(w) for w in workers), "workers outlived the study"
    finally:  # leave nothing running, whatever failed
        study.kill()
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)


def test_die_with_parent_is_a_no_op_without_prctl(monkeypatch):
    def no_libc(*args, **kwargs):
        raise OSError("no C library")
    monkeypatch.setattr(B.ctypes, "CDLL", no_libc)
    assert B.die_with_parent() is False
