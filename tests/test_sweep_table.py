"""scripts/sweep_table.py: one param varied around the recipe, from (synthetic) dvc exp show output."""
import json
import subprocess
import sys

import numpy as np
import pytest

from scripts import sweep_table as W
from tests.conftest import ROOT

RECIPE = {"norm": "bn", "seed": 0, "train": {"lr": 0.4, "l1": 0.0}}


def rev(name, acc, ts, error=None, **train):
    params = {**RECIPE, "train": {**RECIPE["train"], **train}}
    metrics = {f"metrics/train_{n}.json": {"data": {"test_acc": acc, "test_loss": 1 - acc, "train_acc": acc}}
               for n in ("bn", "gn", "ln")}
    return {"rev": name * 8, "name": name, "error": error,
            "data": {"timestamp": ts, "params": {"params.yaml": {"data": params}}, "metrics": metrics}}


def exp_show(*exps):
    base = rev("base", 0.80, "2026-01-01")
    return [{"rev": "workspace", "data": base["data"]}, {**base, "experiments": [{"revs": [e]} for e in exps]}]


def show():
    return exp_show(rev("a", 0.79, "2026-01-02", l1=1e-4),
                    rev("b", 0.50, "2026-01-02", l1=1e-5),  # older run of 1e-5: replaced by c
                    rev("c", 0.81, "2026-01-03", l1=1e-5),
                    rev("d", 0.90, "2026-01-04", l1=1e-5, lr=0.2),  # another recipe: not part of the sweep
                    rev("e", 0.99, "2026-01-05", {"msg": "failed"}, l1=1e-3))  # failed: not a result


def test_sweep_keeps_one_newest_run_per_value_of_the_same_recipe():
    chosen = W.sweep(W.runs_from_exp_show(show()), W.workspace_params(show()), "train.l1")
    assert {v: r["name"] for v, r in chosen.items()} == {0.0: "base", 1e-5: "c", 1e-4: "a"}
    md = W.markdown(chosen, "train.l1", "bn")
    assert "| 1e-05 | 81.00 % | 0.1900 | 81.00 % | c |" in md


def test_figure_draws_each_runs_log():
    chosen = W.sweep(W.runs_from_exp_show(show()), W.workspace_params(show()), "train.l1")
    seen = []

    def read(rev):
        seen.append(rev)
        return {"epoch": np.arange(1, 4), "test_acc": np.array([0.3, 0.5, 0.6])}
    fig = W.figure(chosen, "train.l1", "bn", read)
    assert sorted(seen) == sorted(r["rev"] for r in chosen.values())
    assert len(fig.axes[0].lines) == 3


def test_cli_writes_the_table_and_refuses_a_sweep_of_one_value(tmp_path):
    src, out = tmp_path / "exps.json", tmp_path / "l1.md"
    src.write_text(json.dumps(show()))
    run = lambda *a: subprocess.run([sys.executable, "-m", "scripts.sweep_table", *a, "--json", str(src)],  # noqa: E731
                                    cwd=ROOT, capture_output=True, text=True)
    r = run("train.l1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text().count("\n| ") == 4  # header + 3 values
    r = run("train.lr")
    assert r.returncode == 1 and "found runs for 1 value(s) of train.lr" in r.stderr
    r = run("train.nope")
    assert r.returncode == 2 and "train.nope is not a key of params.yaml" in r.stderr


@pytest.mark.parametrize("key, value", [("train.l1", 0.0), ("seed", 0), ("train.missing", None)])
def test_get_reads_dotted_keys(key, value):
    assert W.get(RECIPE, key) == value
