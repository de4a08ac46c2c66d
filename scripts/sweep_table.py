"""One parameter varied around the committed recipe: a table and a figure from DVC experiments, for one norm and
one run per value, or (--seeds) for one or more norms over several seeds. The L1 + BN study:

    dvc exp run train_bn -S train.l1=1e-5 && dvc exp run train_bn -S train.l1=1e-4
    python -m scripts.sweep_table train.l1 --norm bn --out metrics/l1_bn.md --png plots/l1_bn.png

It reads `dvc exp show -A --json` (every commit and its experiments; or a saved copy: --json FILE) and keeps
the finished runs whose params equal the workspace's params.yaml except for the swept key (and the
reporting-only `norm`); per value of the key, the newest such run. Each run's per-epoch log is read from its
git commit.

With --seeds, each value is run on several seeds and the table gives, per value and norm (--norm bn,gn,ln for
several), mean ± std and the paired difference against params.yaml's own value (the same seed: the same initial
weights and batches); the figure draws bars with one dot per seed. The GN groups study:

    dvc exp run --queue train_gn -S model.gn_groups=1,4,8,16 -S seed=0,1,2 && dvc queue start
    python -m scripts.sweep_table model.gn_groups --norm gn --seeds 0,1,2 --out metrics/gn_groups.md \
        --png plots/gn_groups.png --missing train.muon_warmup=0.1 --missing train.flip_only_last=0 \
        --missing train.muon_stem=true

(params.yaml's value, 2 groups, comes from the seed runs; --missing as in scripts.seed_table.) All three norms:

    dvc exp run --queue -S train.epochs=5,10 -S seed=0,1,2 && dvc queue start
    python -m scripts.sweep_table train.epochs --norm bn,gn,ln --seeds 0,1,2 ...
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np

from scripts.seed_table import (CONFIDENCE, by_seed, parse_missing, percent, runs_from_exp_show, spread,
                                summarize, with_interval, with_missing, without, workspace_params)
from stages import paths
from stages.io import write_text
from stages.model import NORMS
from stages.plot import COLORS, LABELS, parse_log, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (after stages.plot, which selects the file-only Agg backend)


def get(params: dict, key: str):
    """params["train"]["l1"] for key "train.l1"; None if absent."""
    for part in key.split("."):
        params = params.get(part) if isinstance(params, dict) else None
    return params


def sweep(runs: list[dict], recipe: dict, key: str) -> dict:
    """{value of key: newest run with that value}, among the runs equal to `recipe` in everything else."""
    base = without(recipe, key)
    chosen = {}
    for run in sorted(runs, key=lambda r: r["timestamp"]):
        if without(run["params"], key) == base and get(run["params"], key) is not None:
            chosen[get(run["params"], key)] = run
    return dict(sorted(chosen.items()))


def markdown(chosen: dict, key: str, norm: str) -> str:
    lines = [f"`{key}` varied, everything else as in params.yaml; {norm} model; one run per value (the newest).", "",
             f"| `{key}` | test accuracy | test loss | train accuracy | run |", "|---|---|---|---|---|"]
    for value, run in chosen.items():
        m = run["metrics"][str(paths.train_metrics(norm))]
        lines.append(f"| {value} | {100 * m['test_acc']:.2f} % | {m['test_loss']:.4f} | "
                     f"{100 * m['train_acc']:.2f} % | {run['name']} |")
    return "\n".join(lines) + "\n"


def git_log_reader(norm: str) -> Callable[[str], dict[str, np.ndarray]]:
    """Reads plots/train/<norm>.csv as committed in a run's git revision."""
    def read(rev: str) -> dict[str, np.ndarray]:
        return parse_log(subprocess.run(["git", "show", f"{rev}:{paths.train_log(norm)}"], capture_output=True,
                                        text=True, check=True).stdout)
    return read


def figure(chosen: dict, key: str, norm: str, read_log: Callable[[str], dict[str, np.ndarray]]):
    fig, ax = plt.subplots(figsize=(7, 4.4), constrained_layout=True)
    for value, run in chosen.items():
        log = read_log(run["rev"])
        ax.plot(log["epoch"], 100 * log["test_acc"], marker="o", ms=3,
                label=f"{key} = {value}: {100 * log['test_acc'][-1]:.2f} %")
    # The per-epoch log is the plain model on every second test image; the table has the final TTA accuracy.
    ax.set(xlabel="epoch", ylabel="test accuracy (%)",
           title=f"{norm.upper()}: test accuracy per epoch by {key} (every 2nd test image, no TTA)")
    ax.grid(alpha=0.3)
    ax.legend(title="last epoch")
    return fig


def sweep_seeds(runs: list[dict], recipe: dict, key: str, seeds: list[int]) -> dict:
    """{value of key: {seed: newest run}} over `seeds`, among the runs equal to `recipe` in everything but the
    key and the seed."""
    base = without(without(recipe, key), "seed")
    matching = [run for run in runs if without(without(run["params"], key), "seed") == base
                and get(run["params"], key) is not None and run["params"].get("seed") in seeds]
    values = sorted({get(run["params"], key) for run in matching})
    return {value: by_seed([run for run in matching if get(run["params"], key) == value]) for value in values}


def acc(run: dict, norm: str, metric: str = "test_acc") -> float:
    return run["metrics"][str(paths.train_metrics(norm))][metric]


def seeds_markdown(chosen: dict, key: str, norms: list[str], base_value) -> str:
    """Per value and norm: mean ± std over the seeds, and the paired difference against base_value
    (params.yaml's value) of the same norm."""
    base = chosen.get(base_value, {})
    lines = [f"`{key}` varied, everything else as in params.yaml (`{key}: {base_value}`); ± is the sample "
             f"standard deviation over the seeds. Paired: the difference in points against {base_value} for the same "
             f"norm and seed (the same initial weights and batches), its mean and {100 * CONFIDENCE:g} % interval "
             f"(Student's t). "
             f"s / epoch: the runs' mean (it measures the host's speed too, which drifts during a day).", "",
             f"| `{key}` | norm | seeds | test accuracy | per seed | paired against {base_value} | train accuracy | "
             f"s / epoch |", "|---|---|---|---|---|---|---|---|"]
    for value, runs in chosen.items():
        shared, summary = [s for s in runs if s in base], summarize(runs)
        for norm in norms:
            test = summary[norm]["test_acc"]
            diff = "-" if value == base_value or len(shared) < 2 else paired_cell(
                [acc(runs[s], norm) - acc(base[s], norm) for s in shared])
            lines.append(f"| {value} | {norm} | {', '.join(map(str, runs))} | {percent(test)} | "
                         f"{', '.join(f'{100 * v:.2f}' for v in test['values'])} | {diff} | "
                         f"{percent(summary[norm]['train_acc'])} | "
                         f"{spread([acc(r, norm, 'seconds_per_epoch') for r in runs.values()])['mean']:.1f} |")
    return "\n".join(lines) + "\n"


def paired_cell(diffs: list[float]) -> str:
    """"+0.12 (-0.30 to +0.54)": mean paired difference in points and its CONFIDENCE interval."""
    d = with_interval(spread(diffs))
    lo, hi = d["ci"]
    return f"{100 * d['mean']:+.2f} ({100 * lo:+.2f} to {100 * hi:+.2f})"


def seeds_figure(chosen: dict, key: str, norms: list[str], base_value):
    """Test accuracy per value (and norm, side by side): mean ± std bar, params.yaml's value darker, one dot per
    seed."""
    fig, ax = plt.subplots(figsize=(6.4 + 0.8 * (len(norms) - 1), 4.2), constrained_layout=True)
    width = 0.8 / len(norms)
    for i, (value, runs) in enumerate(chosen.items()):
        for j, norm in enumerate(norms):
            x, test = i + (j - (len(norms) - 1) / 2) * width, [100 * acc(r, norm) for r in runs.values()]
            s = spread(test)
            ax.bar(x, s["mean"], width * 0.9, yerr=s["std"], capsize=4, color=COLORS[norm],
                   alpha=0.9 if value == base_value else 0.4, label=LABELS[norm] if i == 0 else None)
            ax.scatter([x] * len(test), test, color="black", s=12, zorder=3)
            ax.annotate(f"{s['mean']:.2f}", (x, s["mean"] + s["std"]), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=8 if len(norms) > 1 else 9)
    every = [100 * acc(r, norm) for runs in chosen.values() for r in runs.values() for norm in norms]
    ax.set_ylim(min(every) - 1, max(every) + 0.6)
    ax.set_xticks(range(len(chosen)), [str(v) for v in chosen])
    who = norms[0].upper() if len(norms) == 1 else "/".join(n.upper() for n in norms)
    ax.set(xlabel=f"{key} (params.yaml: {base_value}, darker)", ylabel="test accuracy (%)",
           title=f"{who}: test accuracy by {key}, mean ± std, dots are seeds")
    if len(norms) > 1:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig


def parse_norms(text: str, several: bool) -> list[str]:
    """["bn", "gn"] from "bn,gn"; ValueError for an unknown norm, a repeat, or several without `several`."""
    norms = [part.strip() for part in text.split(",")]
    if not set(norms) <= set(NORMS) or len(set(norms)) != len(norms) or (len(norms) > 1 and not several):
        raise ValueError(f"--norm takes one of {', '.join(NORMS)} (with --seeds, several, comma-separated); "
                         f"got {text!r}")
    return norms


def parse_seeds(text: str) -> list[int]:
    """[0, 1, 2] from "0,1,2"; ValueError for anything else."""
    parts = [part.strip() for part in text.split(",")]
    seeds = [int(part) for part in parts if part.isdigit()]  # isdigit: no sign, so no negative seeds
    if len(seeds) != len(parts) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds takes distinct seeds >= 0, comma-separated, e.g. 0,1,2; got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("key", help="dotted params.yaml key, e.g. train.l1")
    ap.add_argument("--norm", default="bn", help="bn, gn or ln; with --seeds also several, e.g. bn,gn,ln")
    ap.add_argument("--json", help="a saved `dvc exp show -A --json`; default: run it here")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--png", help="also draw the runs' test accuracy per epoch here (reads their git commits)")
    ap.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: mean ± std per value over them")
    ap.add_argument("--missing", action="append", default=[], metavar="KEY=VALUE",
                    help="count runs that lack the params.yaml key KEY as having VALUE (see scripts.seed_table)")
    args = ap.parse_args(argv)
    try:
        missing, seeds = parse_missing(args.missing), args.seeds and parse_seeds(args.seeds)
        norms = parse_norms(args.norm, several=bool(seeds))
    except ValueError as e:
        ap.error(str(e))
    text = Path(args.json).read_text() if args.json else subprocess.run(
        ["dvc", "exp", "show", "-A", "--json"], capture_output=True, text=True, check=True).stdout
    exp_show = json.loads(text)
    recipe = workspace_params(exp_show)
    if get(recipe, args.key) is None:
        ap.error(f"{args.key} is not a key of params.yaml")
    runs = [{**r, "params": with_missing(r["params"], missing)} for r in runs_from_exp_show(exp_show)]
    if seeds:
        return seeds_main(runs, recipe, args, seeds, norms)
    norm, chosen = norms[0], sweep(runs, recipe, args.key)
    if len(chosen) < 2:
        raise SystemExit(f"found runs for {len(chosen)} value(s) of {args.key}; run e.g. "
                         f"`dvc exp run train_{norm} -S {args.key}=<value>` first")
    table = markdown(chosen, args.key, norm)
    print(table, end="")
    if args.out:
        write_text(Path(args.out), table)
    if args.png:
        save_figure(figure(chosen, args.key, norm, git_log_reader(norm)), Path(args.png))


def seeds_main(runs: list[dict], recipe: dict, args: argparse.Namespace, seeds: list[int], norms: list[str]) -> None:
    chosen = sweep_seeds(runs, recipe, args.key, seeds)
    if len(chosen) < 2:
        raise SystemExit(f"found runs for {len(chosen)} value(s) of {args.key} on seeds {args.seeds}; run e.g. "
                         f"`dvc exp run --queue -S {args.key}=<value> -S seed={args.seeds}` first")
    base_value = get(recipe, args.key)
    table = seeds_markdown(chosen, args.key, norms, base_value)
    print(table, end="")
    if args.out:
        write_text(Path(args.out), table)
    if args.png:
        save_figure(seeds_figure(chosen, args.key, norms, base_value), Path(args.png))


if __name__ == "__main__":
    main()
