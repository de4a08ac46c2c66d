"""One parameter varied around the committed recipe, for one norm: a table and test-accuracy curves, from DVC
experiments. The L1 + BN study:

    dvc exp run train_bn -S train.l1=1e-5 && dvc exp run train_bn -S train.l1=1e-4
    python -m scripts.sweep_table train.l1 --norm bn --out metrics/l1_bn.md --png plots/l1_bn.png

It reads `dvc exp show -A --json` (every commit and its experiments; or a saved copy: --json FILE) and keeps
the finished runs whose params equal the workspace's params.yaml except for the swept key (and the
reporting-only `norm`); per value of the key, the newest such run. Each run's per-epoch log is read from its
git commit.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np

from scripts.seed_table import runs_from_exp_show, without, workspace_params
from stages import paths
from stages.io import write_text
from stages.model import NORMS
from stages.plot import parse_log, save_figure

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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("key", help="dotted params.yaml key, e.g. train.l1")
    ap.add_argument("--norm", choices=NORMS, default="bn")
    ap.add_argument("--json", help="a saved `dvc exp show -A --json`; default: run it here")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--png", help="also draw the runs' test accuracy per epoch here (reads their git commits)")
    args = ap.parse_args(argv)
    text = Path(args.json).read_text() if args.json else subprocess.run(
        ["dvc", "exp", "show", "-A", "--json"], capture_output=True, text=True, check=True).stdout
    exp_show = json.loads(text)
    recipe = workspace_params(exp_show)
    if get(recipe, args.key) is None:
        ap.error(f"{args.key} is not a key of params.yaml")
    chosen = sweep(runs_from_exp_show(exp_show), recipe, args.key)
    if len(chosen) < 2:
        raise SystemExit(f"found runs for {len(chosen)} value(s) of {args.key}; run e.g. "
                         f"`dvc exp run train_{args.norm} -S {args.key}=<value>` first")
    table = markdown(chosen, args.key, args.norm)
    print(table, end="")
    if args.out:
        write_text(Path(args.out), table)
    if args.png:
        save_figure(figure(chosen, args.key, args.norm, git_log_reader(args.norm)), Path(args.png))


if __name__ == "__main__":
    main()
