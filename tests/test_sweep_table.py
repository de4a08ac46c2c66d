"""scripts/sweep_table.py: one param varied around the recipe, from (synthetic) dvc exp show output."""
import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.collections import PathCollection

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


def seeded(name, acc, ts, seed, groups, error=None, **model):
    """A run of the GN groups study: model.gn_groups = groups on `seed` (train_gn's metrics carry acc)."""
    r = rev(name, acc, ts, error)
    params = r["data"]["params"]["params.yaml"]["data"]
    params.update(seed=seed, model={"gn_groups": groups, **model})
    for m in r["data"]["metrics"].values():
        m["data"]["seconds_per_epoch"] = 8.0
    return r


def groups_show():
    runs = [seeded(f"g{g}s{s}", 0.80 + 0.01 * g + 0.001 * s, "2026-01-02", s, g) for g in (1, 2, 4) for s in (0, 1, 2)]
    runs += [seeded("old", 0.10, "2026-01-01", 0, 4),                    # older run of the same seed: replaced
             seeded("s3", 0.99, "2026-01-03", 3, 4),                     # a seed not asked for
             seeded("wide", 0.99, "2026-01-03", 1, 4, widths=[32]),      # another recipe
             seeded("fail", 0.99, "2026-01-03", 2, 8, {"msg": "failed"})]  # not a result
    base = seeded("base", 0.80, "2026-01-01", 0, 2)
    return [{"rev": "workspace", "data": base["data"]}, {**base, "experiments": [{"revs": [e]} for e in runs]}]


def test_sweep_seeds_keeps_the_newest_run_per_value_and_asked_seed_of_the_same_recipe():
    exp = groups_show()
    chosen = W.sweep_seeds(W.runs_from_exp_show(exp), W.workspace_params(exp), "model.gn_groups", [0, 1, 2])
    assert {v: {s: r["name"] for s, r in runs.items()} for v, runs in chosen.items()} == {
        g: {s: f"g{g}s{s}" for s in (0, 1, 2)} for g in (1, 2, 4)}


def test_seeds_markdown_gives_mean_std_and_the_paired_difference_against_the_recipe_value():
    exp = groups_show()
    chosen = W.sweep_seeds(W.runs_from_exp_show(exp), W.workspace_params(exp), "model.gn_groups", [0, 1, 2])
    chosen[4][1]["metrics"]["metrics/train_gn.json"]["test_acc"] = 0.845  # g4 seeds: 0.840, 0.845, 0.842
    md = W.seeds_markdown(chosen, "model.gn_groups", ["gn"], 2)
    # against 2 groups (0.820, 0.821, 0.822): +2.00, +2.40, +2.00 points, mean +2.13, t(2) interval +1.56 to +2.71
    assert "| 4 | gn | 0, 1, 2 | 84.23 ± 0.25 % | 84.00, 84.50, 84.20 | +2.13 (+1.56 to +2.71) |" in md
    assert "| 2 | gn | 0, 1, 2 | 82.10 ± 0.10 % | 82.00, 82.10, 82.20 | - |" in md
    assert md.count("\n| ") == 4  # header + one row per value
    one = {2: chosen[2], 4: {0: chosen[4][0]}}  # a single shared seed: no interval
    assert "| 4 | gn | 0 | 84.00 ± 0.00 % | 84.00 | - |" in W.seeds_markdown(one, "model.gn_groups", ["gn"], 2)
    # several norms: one row per value and norm, each paired against its own norm (bn untouched: +2.00 flat)
    md = W.seeds_markdown(chosen, "model.gn_groups", ["bn", "gn"], 2)
    assert md.count("\n| ") == 7 and "| 4 | bn | 0, 1, 2 | 84.10 ± 0.10 % | 84.00, 84.10, 84.20 | +2.00 (+2.00 to +2.00) |" in md


def test_seeds_figure_draws_one_bar_and_one_dot_per_seed_for_each_value():
    exp = groups_show()
    chosen = W.sweep_seeds(W.runs_from_exp_show(exp), W.workspace_params(exp), "model.gn_groups", [0, 1])
    for norms in (["gn"], ["bn", "gn", "ln"]):
        ax = W.seeds_figure(chosen, "model.gn_groups", norms, 2).axes[0]
        dots = [c for c in ax.collections if isinstance(c, PathCollection)]  # the error bars are collections too
        assert len(ax.patches) == 3 * len(norms) and [len(c.get_offsets()) for c in dots] == [2] * 3 * len(norms)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
        assert (ax.get_legend() is not None) == (len(norms) > 1)


def test_cli_seeds_mode_counts_missing_options_and_rejects_bad_seeds(tmp_path):
    exp = groups_show()
    for e in exp[1]["experiments"]:  # runs made before an option existed lack it; --missing fills it in
        e["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"].pop("l1")
    src, out, png = tmp_path / "exps.json", tmp_path / "groups.md", tmp_path / "groups.png"
    src.write_text(json.dumps(exp))
    run = lambda *a: subprocess.run([sys.executable, "-m", "scripts.sweep_table", "model.gn_groups", "--norm", "gn",  # noqa: E731
                                     *a, "--json", str(src)], cwd=ROOT, capture_output=True, text=True)
    r = run("--seeds", "0,1,2")
    assert r.returncode == 1 and "found runs for 1 value(s) of model.gn_groups on seeds 0,1,2" in r.stderr
    r = run("--seeds", "0,1,2", "--missing", "train.l1=0.0", "--out", str(out), "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert out.read_text().count("\n| ") == 4 and png.stat().st_size > 0  # header + 3 values
    for bad in ("0,0", "a,1", "-1"):
        r = run("--seeds", bad)
        assert r.returncode == 2 and "--seeds takes distinct seeds >= 0" in r.stderr, (bad, r.stderr)
    r = run("--seeds", "0", "--missing", "nokey")
    assert r.returncode == 2 and "--missing takes KEY=VALUE" in r.stderr
    r = run("--seeds", "0,1,2", "--missing", "train.l1=0.0", "--norm", "bn,ln", "--out", str(out))
    assert r.returncode == 0 and out.read_text().count("\n| ") == 7, r.stderr  # header + 3 values x 2 norms
    for bad in ("bn,bn", "xn", "bn,"):
        r = run("--seeds", "0,1,2", "--norm", bad)
        assert r.returncode == 2 and "--norm takes one of bn, gn, ln" in r.stderr, (bad, r.stderr)


def test_cli_without_seeds_takes_one_norm(tmp_path):
    src = tmp_path / "exps.json"
    src.write_text(json.dumps(show()))
    r = subprocess.run([sys.executable, "-m", "scripts.sweep_table", "train.l1", "--norm", "bn,gn", "--json", str(src)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "with --seeds, several" in r.stderr
