import json
import statistics
import subprocess
import sys

import pytest

from scripts import seed_table as S
from tests.conftest import ROOT

PARAMS = {"norm": "bn", "seed": 0, "model": {"widths": [16, 32]}, "train": {"lr": 0.4}}


def rev(name, seed, accs, ts, **changes):
    metrics = {f"metrics/train_{n}.json": {"data": {"test_acc": a, "test_loss": 1 - a, "train_acc": a + 0.01}}
               for n, a in zip(S.NORMS, accs)}
    params = {**PARAMS, "seed": seed, **changes}
    return {"rev": name, "name": name, "data": {"timestamp": ts, "params": {"params.yaml": {"data": params}},
                                                "metrics": metrics}}


def exp_show(*exps, baseline=None):
    base = baseline or rev("abc1234", 0, (0.80, 0.70, 0.75), "2026-01-01")
    return [{"rev": "workspace", "data": base["data"]},  # the workspace repeats HEAD: not counted twice
            {**base, "experiments": [{"revs": [e]} for e in exps]}]


def seeds(show):
    kept, _ = S.same_recipe(S.runs_from_exp_show(show), S.workspace_params(show))
    return S.by_seed(kept)


def saved(tmp_path, show):
    """`dvc exp show --json` output written to a file, as the CLI's --json reads it."""
    src = tmp_path / "exps.json"
    src.write_text(json.dumps(show))
    return str(src)


def cli(*args):
    """python -m scripts.seed_table ARGS from the repository root."""
    return subprocess.run([sys.executable, "-m", "scripts.seed_table", *args], cwd=ROOT, capture_output=True,
                          text=True)


def test_mean_and_sample_std_per_norm(tmp_path):
    show = exp_show(rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02"), rev("e2", 2, (0.81, 0.68, 0.76), "2026-01-03"),
                    rev("e3", 2, (0.50, 0.50, 0.50), "2026-01-01"))  # older run of seed 2: replaced by e2
    summary = S.summarize(seeds(show))
    assert summary["bn"]["test_acc"]["values"] == [0.80, 0.82, 0.81]
    assert summary["gn"]["test_acc"]["mean"] == pytest.approx(0.70)
    assert summary["ln"]["test_acc"]["std"] == pytest.approx(statistics.stdev([0.75, 0.74, 0.76]))


def test_norm_only_runs_count_as_the_same_recipe():
    show = exp_show(rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02", norm="gn"))
    assert list(seeds(show)) == [0, 1]


def test_runs_of_another_recipe_are_left_out_and_named(tmp_path):
    show = exp_show(rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02", train={"lr": 0.2}),  # e.g. an L1 sweep
                    rev("e2", 2, (0.81, 0.71, 0.73), "2026-01-03"))
    assert list(seeds(show)) == [0, 2]
    r = cli("--json", saved(tmp_path, show))
    assert r.returncode == 0 and "left out 1 run(s) of another recipe than params.yaml: e1" in r.stderr
    assert "Over seeds 0, 2" in r.stdout


def test_unfinished_runs_are_skipped():
    broken = rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02")
    del broken["data"]["metrics"]["metrics/train_ln.json"]
    assert list(seeds(exp_show(broken))) == [0]


def test_cli_writes_markdown_and_json(tmp_path):
    src = saved(tmp_path, exp_show(rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02")))
    out = tmp_path / "seeds.md"
    r = cli("--json", src, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "| bn | 81.00 ± 1.41 % |" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["seeds"] == [0, 1]


def test_failed_experiments_are_not_counted():
    # DVC lists a failed experiment with its baseline's metrics: counting it would duplicate the baseline
    failed = rev("e1", 1, (0.80, 0.70, 0.75), "2026-01-02")
    failed["error"] = {"msg": "Experiment run failed", "type": ""}
    assert list(seeds(exp_show(failed))) == [0]


def test_summary_redraws_table_and_plot_without_experiments(tmp_path):
    src = saved(tmp_path, exp_show(rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02")))
    out = tmp_path / "seeds.md"
    assert cli("--json", src, "--out", str(out)).returncode == 0
    again, png = tmp_path / "again.md", tmp_path / "seeds.png"
    r = cli("--summary", str(out.with_suffix(".json")), "--out", str(again), "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert again.read_text() == out.read_text()
    assert png.stat().st_size > 10_000


def test_paired_differences_have_a_student_t_interval():
    show = exp_show(rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02"), rev("e2", 2, (0.81, 0.68, 0.76), "2026-01-03"))
    diffs = S.paired_differences(S.summarize(seeds(show)))
    bn_gn = diffs[("bn", "gn")]
    assert bn_gn["values"] == pytest.approx([0.10, 0.10, 0.13])
    assert bn_gn["mean"] == pytest.approx(0.11)
    half = 4.302652729911275 * statistics.stdev([0.10, 0.10, 0.13]) / 3 ** 0.5  # t(0.975, 2 df), from a t table
    assert bn_gn["ci"] == pytest.approx((0.11 - half, 0.11 + half))
    assert diffs[("gn", "ln")]["mean"] == pytest.approx(statistics.fmean([-0.05, -0.02, -0.08]))
    table = S.markdown(S.summarize(seeds(show)), [0, 1, 2])
    assert "| BN - GN | +11.00 | +6.70 to +15.30 | +10.00, +10.00, +13.00 |" in table
    assert "n - 1 = 2 degrees of freedom" in table


def test_one_seed_has_no_interval_and_no_paired_table():
    summary = S.summarize(seeds(exp_show()))
    assert S.paired_differences(summary)[("bn", "ln")]["ci"] is None
    assert "Paired" not in S.markdown(summary, [0])


def test_a_running_experiment_is_not_counted():
    # while it runs, DVC lists an experiment's metric files that do not exist yet with an error and no data
    running = rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02")
    running["data"]["metrics"]["metrics/train_bn.json"] = {"error": {"type": "FileNotFoundError", "msg": "..."}}
    assert list(seeds(exp_show(running))) == [0]


def test_first_seeds_line_averages_only_the_first_n():
    show = exp_show(rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02"), rev("e2", 2, (0.90, 0.60, 0.76), "2026-01-03"))
    summary = S.summarize(seeds(show))
    line = S.first_line(summary, [0, 1, 2], 2)
    assert line == ("The first 2 seeds alone (0, 1): test accuracy bn 81.00 ± 1.41 %, gn 71.00 ± 1.41 %, "
                    "ln 74.50 ± 0.71 %.\n")
    assert line in S.markdown(summary, [0, 1, 2], first=2)
    assert S.first_line(summary, [0, 1, 2], 3) == "" and S.first_line(summary, [0, 1, 2], 0) == ""
    assert "first" not in S.markdown(summary, [0, 1, 2])


@pytest.mark.parametrize("option, bad, message", [
    ("--first", "1", "--first must be 0 (off) or a number of seeds >= 2"),
    ("--first", "-2", "--first must be 0 (off) or a number of seeds >= 2"),
    ("--missing", "train.flip_only_last", "--missing takes KEY=VALUE"),
    ("--missing", "=0", "--missing takes KEY=VALUE"),
])
def test_cli_rejects_bad_options(tmp_path, option, bad, message):
    r = cli("--json", saved(tmp_path, exp_show()), option, bad)
    assert r.returncode == 2 and message in r.stderr


def test_first_line_survives_a_redraw_from_the_summary(tmp_path):
    src = saved(tmp_path, exp_show(rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-02"),
                                   rev("e2", 2, (0.90, 0.60, 0.76), "2026-01-03")))
    out, again = tmp_path / "seeds.md", tmp_path / "again.md"
    assert cli("--json", src, "--out", str(out), "--first", "2").returncode == 0
    assert "The first 2 seeds alone (0, 1)" in out.read_text()
    assert cli("--summary", str(out.with_suffix(".json")), "--out", str(again)).returncode == 0
    assert again.read_text() == out.read_text()


def test_reads_the_experiments_of_every_commit(monkeypatch, capsys):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(exp_show()), stderr="")

    monkeypatch.setattr(S.subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["seed_table"])
    S.main()
    assert calls == [["dvc", "exp", "show", "--all-commits", "--json"]]
    assert "Over seeds 0 (n = 1" in capsys.readouterr().out


def test_many_runs_of_other_recipes_are_counted_and_the_newest_named(monkeypatch, capsys):
    other = [rev(f"x{i:02d}", 1, (0.8, 0.7, 0.7), f"2026-01-{i + 2:02d}", train={"lr": 0.1}) for i in range(12)]
    show = exp_show(*other)
    monkeypatch.setattr(S.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, json.dumps(show)))
    monkeypatch.setattr(sys, "argv", ["seed_table"])
    S.main()
    err = capsys.readouterr().err
    assert "left out 12 run(s) of another recipe than params.yaml: x11, x10, x09, x08, x07, x06, x05, x04 " \
           "and 4 more" in err


def test_missing_counts_runs_made_before_an_option_existed_at_its_neutral_value(tmp_path):
    """The workspace has train.flip_only_last (0); e1 was made before the option existed, e2 sets it to 2."""
    base = rev("abc1234", 0, (0.80, 0.70, 0.75), "2026-01-03", train={"lr": 0.4, "flip_only_last": 0})
    old = rev("e1", 1, (0.82, 0.72, 0.74), "2026-01-01")
    other = rev("e2", 2, (0.81, 0.71, 0.73), "2026-01-02", train={"lr": 0.4, "flip_only_last": 2})
    src = saved(tmp_path, exp_show(old, other, baseline=base))
    r = cli("--json", src)
    assert r.returncode == 0 and "Over seeds 0 (n = 1" in r.stdout and "left out 2 run(s)" in r.stderr
    r = cli("--json", src, "--missing", "train.flip_only_last=0")
    assert r.returncode == 0 and "Over seeds 0, 1 (n = 2" in r.stdout and "left out 1 run(s)" in r.stderr
    assert "e2" in r.stderr  # a run that set the option keeps its own value
    r = cli("--json", src, "--missing", "train.flip_only_last=1")  # another value than the workspace's: e1 still differs
    assert "Over seeds 0 (n = 1" in r.stdout


def test_with_missing_fills_only_absent_dotted_keys():
    params = {"seed": 1, "train": {"lr": 0.2}}
    out = S.with_missing(params, {"train.lr": 0.5, "train.flip_only_last": 0, "model.act": True})
    assert out == {"seed": 1, "train": {"lr": 0.2, "flip_only_last": 0}, "model": {"act": True}}
    assert params == {"seed": 1, "train": {"lr": 0.2}}  # the run's own params are not changed
    assert S.parse_missing(["train.tta=flip", "train.flip_only_last=0", "x=true"]) == {
        "train.tta": "flip", "train.flip_only_last": 0, "x": True}
