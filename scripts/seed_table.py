"""Mean ± std over seeds, per norm, from DVC experiments.

    dvc exp run --queue -S seed=0,1,2 && dvc queue start    # train every norm for each seed
    dvc queue status                                        # wait until all are done
    python -m scripts.seed_table --out metrics/seeds.md --png plots/seeds.png --first 3   # mean ± std per norm

Besides mean ± std per norm it tabulates the paired differences between norms (same seed, same initial
weights and batches) with a 95 % confidence interval of their mean. --first N adds one line with the means
over the first N seeds alone (the headline targets are means of 3 seeds; more seeds narrow the intervals).

It reads `dvc exp show --all-commits --json` (or a saved copy: --json FILE): every commit and every
experiment, so seeds run on an earlier commit of the same recipe still count (a commit that changes only
docs moves HEAD away from them).
Only runs of the workspace's params.yaml count: runs that differ in any other param than `seed` (or the
reporting-only `norm`) are left out and named on stderr, so a table never mixes recipes. They are grouped
by `seed` (one run per seed; the newest wins). A param added to params.yaml after a run was made is missing
from that run; `--missing train.flip_only_last=0` counts such runs as having that value, for a new option
whose value computes the same bits as the code before it (the option's tests and a re-run should say so).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from stages.io import write_json, write_text
from stages.model import NORMS
from stages.paths import train_metrics
from stages.plot import COLORS, LABELS, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (after stages.plot, which selects the file-only Agg backend)
from scipy import stats  # noqa: E402  (installed with scikit-learn)

METRICS = ("test_acc", "test_loss", "train_acc")
PAIRS = (("bn", "gn"), ("bn", "ln"), ("gn", "ln"))
CONFIDENCE = 0.95
NAMED = 8  # runs of other recipes named on stderr


def runs_from_exp_show(exp_show: list[dict]) -> list[dict]:
    """Every finished run (baseline commits and experiments) as {"name", "params", "metrics"}."""
    runs = []
    for top in exp_show:
        revs = [top] if top.get("rev") != "workspace" else []
        for exp in top.get("experiments") or []:
            revs += exp.get("revs", [])
        for rev in revs:
            if rev.get("error"):
                continue  # a failed experiment still lists its baseline's metrics: not a result
            data = rev.get("data") or {}
            metrics = {k: v.get("data", {}) for k, v in (data.get("metrics") or {}).items()}
            if not all(set(METRICS) <= set(metrics.get(str(train_metrics(n)), {})) for n in NORMS):
                continue  # failed, or still running (DVC lists its missing metric files with an error)
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            runs.append({"name": rev.get("name") or rev.get("rev", "")[:7], "rev": rev.get("rev", ""),
                         "params": params, "metrics": metrics, "timestamp": data.get("timestamp") or ""})
    return runs


def workspace_params(exp_show: list[dict]) -> dict:
    """params.yaml of the workspace as DVC read it (the same parser as the runs' params)."""
    for top in exp_show:
        if top.get("rev") == "workspace":
            return top["data"]["params"]["params.yaml"]["data"]
    raise SystemExit("the dvc exp show output has no workspace entry")


def parent_of(tree: dict, key: str, create: bool = False) -> tuple[dict, str]:
    """(the dict that holds the dotted key, its last part): for "train.l1", (tree["train"], "l1"). A missing
    level is added to tree if `create`, else stands in as a new empty dict (tree is left as it is)."""
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {}) if create else tree.get(part, {})
    return tree, last


def without(params: dict, key: str) -> dict:
    """A deep copy of params without the dotted key and without `norm` (it only selects what evaluate reports)."""
    out = json.loads(json.dumps({k: v for k, v in params.items() if k != "norm"}))
    node, last = parent_of(out, key)
    node.pop(last, None)
    return out


def parse_missing(items: list[str]) -> dict[str, object]:
    """{dotted key: value} from --missing KEY=VALUE items (VALUE read as YAML: 0 is an int, true a bool)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--missing takes KEY=VALUE (a dotted params.yaml key), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def with_missing(params: dict, missing: dict[str, object]) -> dict:
    """A deep copy of params where each dotted key of `missing` that params lacks is set to its value (keys
    params has keep their own value, so a run that set the option differently still differs)."""
    out = json.loads(json.dumps(params))
    for key, value in missing.items():
        node, last = parent_of(out, key, create=True)
        node.setdefault(last, value)
    return out


def same_recipe(runs: list[dict], recipe: dict) -> tuple[list[dict], list[dict]]:
    """(runs whose params equal `recipe` in everything but the seed and norm, the other runs). Other
    experiments of the same commit (an L1 sweep, say) are left out instead of being averaged in."""
    base = without(recipe, "seed")
    same = [without(r["params"], "seed") == base for r in runs]
    return [r for r, s in zip(runs, same) if s], [r for r, s in zip(runs, same) if not s]


def left_out_message(other: list[dict]) -> str:
    """What same_recipe left out, naming the newest NAMED runs (read from every commit, they are many)."""
    names = [r["name"] for r in sorted(other, key=lambda r: r["timestamp"], reverse=True)]
    more = f" and {len(names) - NAMED} more" if len(names) > NAMED else ""
    return f"left out {len(other)} run(s) of another recipe than params.yaml: {', '.join(names[:NAMED])}{more}"


def by_seed(runs: list[dict]) -> dict[int, dict]:
    """One run per seed: the newest."""
    chosen = {run["params"]["seed"]: run for run in sorted(runs, key=lambda r: r["timestamp"])}
    return dict(sorted(chosen.items()))


def spread(values: list[float]) -> dict:
    """{"mean", "std", "values"}; std is the sample std (n-1), 0 for one value."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def summarize(seeds: dict[int, dict]) -> dict:
    """{norm: {metric: spread over the seeds}}."""
    return {norm: {m: spread([run["metrics"][str(train_metrics(norm))][m] for run in seeds.values()])
                   for m in METRICS} for norm in NORMS}


def paired_differences(summary: dict, confidence: float = CONFIDENCE) -> dict:
    """{(a, b): {"values", "mean", "std", "ci"}}: per pair of norms, the test-accuracy difference a - b on each
    seed, its mean and sample std, and a `confidence` interval of the mean difference (Student's t with n - 1
    degrees of freedom; None for one seed). Paired, because one seed gives every norm the same initial
    weights, batches and augmentations (a test checks it), so whatever seed-to-seed variation the norms
    share cancels. (After 20 epochs little is shared: the differences vary about as much as the accuracies.)"""
    return {(a, b): with_interval(spread([x - y for x, y in zip(summary[a]["test_acc"]["values"],
                                                               summary[b]["test_acc"]["values"])]), confidence)
            for a, b in PAIRS}


def with_interval(d: dict, confidence: float = CONFIDENCE) -> dict:
    """A spread of paired differences plus "ci": the `confidence` interval of their mean by Student's t with
    n - 1 degrees of freedom (None for one value)."""
    n = len(d["values"])
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * d["std"] / n ** 0.5 if n > 1 else None
    return {**d, "ci": None if half is None else (d["mean"] - half, d["mean"] + half)}


def paired_markdown(summary: dict, confidence: float = CONFIDENCE) -> str:
    """The paired differences as a markdown table (empty for fewer than two seeds: no interval)."""
    diffs = paired_differences(summary, confidence)
    n = len(next(iter(diffs.values()))["values"])
    if n < 2:
        return ""
    pts = lambda v: f"{100 * v:+.2f}"  # noqa: E731  (accuracy fractions as signed percentage points)
    level = f"{100 * confidence:g} %"
    lines = [f"Paired differences of test accuracy in points (each seed trains every norm from the same initial "
             f"weights on the same batches); {level} confidence interval of the mean difference by Student's t "
             f"with n - 1 = {n - 1} degrees of freedom. An interval that excludes 0 is an ordering that holds "
             f"beyond the seed-to-seed spread.", "",
             f"| comparison | mean difference | {level} interval | per seed |", "|---|---|---|---|"]
    for (a, b), d in diffs.items():
        lo, hi = d["ci"]
        lines.append(f"| {a.upper()} - {b.upper()} | {pts(d['mean'])} | {pts(lo)} to {pts(hi)} | "
                     f"{', '.join(pts(v) for v in d['values'])} |")
    return "\n".join(lines) + "\n"


def percent(s: dict) -> str:
    """A spread of accuracy fractions as "mean ± std %" in percent."""
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} %"


def first_line(summary: dict, seeds: list[int], first: int) -> str:
    """One line: test accuracy mean ± std per norm over the first `first` seeds only ("" unless fewer than all)."""
    if not 1 < first < len(seeds):
        return ""
    means = ", ".join(f"{norm} {percent(spread(s['test_acc']['values'][:first]))}" for norm, s in summary.items())
    return f"The first {first} seeds alone ({', '.join(map(str, seeds[:first]))}): test accuracy {means}.\n"


def markdown(summary: dict, seeds: list[int], first: int = 0) -> str:
    lines = [f"Over seeds {', '.join(map(str, seeds))} (n = {len(seeds)}; ± is the sample standard deviation).", "",
             "| norm | test accuracy | test loss | train accuracy | test accuracy per seed |",
             "|---|---|---|---|---|"]
    for norm, s in summary.items():
        per_seed = ", ".join(f"{100 * v:.2f}" for v in s["test_acc"]["values"])
        loss = f"{s['test_loss']['mean']:.4f} ± {s['test_loss']['std']:.4f}"
        lines.append(f"| {norm} | {percent(s['test_acc'])} | {loss} | {percent(s['train_acc'])} | {per_seed} |")
    paired, alone = paired_markdown(summary), first_line(summary, seeds, first)
    return "\n".join(lines) + "\n" + "".join("\n" + part for part in (alone, paired) if part)


def figure(summary: dict, seeds: list[int]):
    """Test accuracy per norm: mean ± std bar and one dot per seed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    for i, (norm, s) in enumerate(summary.items()):
        acc = s["test_acc"]
        ax.bar(i, 100 * acc["mean"], yerr=100 * acc["std"], capsize=6, color=COLORS[norm], alpha=0.6)
        ax.scatter([i] * len(acc["values"]), [100 * v for v in acc["values"]], color="black", s=14, zorder=3)
        ax.annotate(f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}", (i, 100 * (acc["mean"] + acc["std"])),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9)
    lows = [min(s["test_acc"]["values"]) for s in summary.values()]
    ax.set_ylim(100 * min(lows) - 3, 100 * max(s["test_acc"]["mean"] + s["test_acc"]["std"] for s in summary.values()) + 2)
    ax.set_xticks(range(len(summary)), [LABELS[n] for n in summary], fontsize=8)
    ax.set(ylabel="test accuracy (%)", title=f"Test accuracy over seeds {', '.join(map(str, seeds))}: "
                                            "mean ± std, dots are single runs")
    ax.grid(axis="y", alpha=0.3)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="a saved `dvc exp show --json`; default: run it here")
    ap.add_argument("--summary", help="draw --png from a summary written by --out (its .json) instead of runs")
    ap.add_argument("--out", help="also write the markdown table here (and the numbers next to it as .json)")
    ap.add_argument("--png", help="also draw the per-norm test accuracy over seeds here")
    ap.add_argument("--first", type=int, default=0, metavar="N",
                    help="also give the test-accuracy means over the first N seeds alone")
    ap.add_argument("--missing", action="append", default=[], metavar="KEY=VALUE",
                    help="count runs that lack the params.yaml key KEY (dotted, e.g. train.flip_only_last) "
                         "as having VALUE: for an option added later whose VALUE computes the same bits")
    args = ap.parse_args()
    if args.first < 0 or args.first == 1:
        ap.error(f"--first must be 0 (off) or a number of seeds >= 2, got {args.first}")
    try:
        missing = parse_missing(args.missing)
    except ValueError as e:
        ap.error(str(e))
    if args.summary:
        saved = json.loads(Path(args.summary).read_text())
        seeds, first, summary = saved.pop("seeds"), saved.pop("first", 0), saved
        args.first = args.first or first
    else:
        text = Path(args.json).read_text() if args.json else subprocess.run(
            ["dvc", "exp", "show", "--all-commits", "--json"], capture_output=True, text=True, check=True).stdout
        exp_show = json.loads(text)
        runs = [{**r, "params": with_missing(r["params"], missing)} for r in runs_from_exp_show(exp_show)]
        kept, other = same_recipe(runs, workspace_params(exp_show))
        if other:
            print(left_out_message(other), file=sys.stderr)
        runs = by_seed(kept)
        if not runs:
            raise SystemExit("no finished runs found: run `dvc exp run --queue -S seed=0,1,2` and `dvc queue start`")
        seeds, summary = list(runs), summarize(runs)
    table = markdown(summary, seeds, args.first)
    print(table, end="")
    if args.out:
        write_text(Path(args.out), table)
        write_json(Path(args.out).with_suffix(".json"), {"seeds": seeds, "first": args.first, **summary})
    if args.png:
        save_figure(figure(summary, seeds), Path(args.png))


if __name__ == "__main__":
    main()
