"""Mean ± std over seeds, per norm, from DVC experiments.

    dvc exp run --queue -S seed=0,1,2 && dvc queue start    # train every norm for each seed
    dvc queue status                                        # wait until all are done
    python -m scripts.seed_table --out metrics/seeds.md     # table of mean ± std per norm

It reads `dvc exp show --json` (or a saved copy: --json FILE): the committed baseline and every experiment.
Runs are grouped by `seed` (one run per seed; the newest wins); runs that differ in any other training
param than `seed` (or the reporting-only `norm`) are refused, so a table never mixes recipes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from stages.model import NORMS
from stages.paths import train_metrics

METRICS = ("test_acc", "test_loss", "train_acc")
IGNORED_PARAMS = {"seed", "norm"}  # norm only selects what evaluate reports; it does not change training


def runs_from_exp_show(exp_show: list[dict]) -> list[dict]:
    """Every finished run (baseline commits and experiments) as {"name", "params", "metrics"}."""
    runs = []
    for top in exp_show:
        revs = [top] if top.get("rev") != "workspace" else []
        for exp in top.get("experiments") or []:
            revs += exp.get("revs", [])
        for rev in revs:
            data = rev.get("data") or {}
            metrics = {k: v.get("data", {}) for k, v in (data.get("metrics") or {}).items()}
            if not all(str(train_metrics(n)) in metrics for n in NORMS):
                continue  # failed or unfinished run
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            runs.append({"name": rev.get("name") or rev.get("rev", "")[:7], "params": params, "metrics": metrics,
                         "timestamp": data.get("timestamp") or ""})
    return runs


def by_seed(runs: list[dict]) -> dict[int, dict]:
    """One run per seed (the newest); raises ValueError if the runs differ in more than the seed."""
    recipe = None
    chosen: dict[int, dict] = {}
    for run in sorted(runs, key=lambda r: r["timestamp"]):
        other = {k: v for k, v in run["params"].items() if k not in IGNORED_PARAMS}
        if recipe is None:
            recipe = other
        elif other != recipe:
            diff = sorted(k for k in set(other) | set(recipe) if other.get(k) != recipe.get(k))
            raise ValueError(f"run {run['name']} differs from the others in {', '.join(diff)}, not only the seed; "
                             f"remove it (dvc exp remove) or compare like with like")
        chosen[run["params"]["seed"]] = run
    return dict(sorted(chosen.items()))


def summarize(seeds: dict[int, dict]) -> dict:
    """{norm: {metric: {"mean", "std", "values"}}}; std is the sample std (n-1), 0 for one seed."""
    out = {}
    for norm in NORMS:
        out[norm] = {}
        for m in METRICS:
            values = [run["metrics"][str(train_metrics(norm))][m] for run in seeds.values()]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[norm][m] = {"mean": statistics.fmean(values), "std": std, "values": values}
    return out


def markdown(summary: dict, seeds: list[int]) -> str:
    pct = lambda s: f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} %"  # noqa: E731
    lines = [f"Over seeds {', '.join(map(str, seeds))} (n = {len(seeds)}; ± is the sample standard deviation).", "",
             "| norm | test accuracy | test loss | train accuracy | test accuracy per seed |",
             "|---|---|---|---|---|"]
    for norm, s in summary.items():
        per_seed = ", ".join(f"{100 * v:.2f}" for v in s["test_acc"]["values"])
        loss = f"{s['test_loss']['mean']:.4f} ± {s['test_loss']['std']:.4f}"
        lines.append(f"| {norm} | {pct(s['test_acc'])} | {loss} | {pct(s['train_acc'])} | {per_seed} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="a saved `dvc exp show --json`; default: run it here")
    ap.add_argument("--out", help="also write the markdown table here (and the numbers next to it as .json)")
    args = ap.parse_args()
    text = Path(args.json).read_text() if args.json else subprocess.run(
        ["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True).stdout
    seeds = by_seed(runs_from_exp_show(json.loads(text)))
    if not seeds:
        raise SystemExit("no finished runs found: run `dvc exp run --queue -S seed=0,1,2` and `dvc queue start`")
    summary = summarize(seeds)
    table = markdown(summary, list(seeds))
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)
        Path(args.out).with_suffix(".json").write_text(json.dumps({"seeds": list(seeds), **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
