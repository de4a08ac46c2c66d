"""Does BatchNorm degrade at small batches while GroupNorm and LayerNorm do not? (GN paper, Figure 1)

    DATA_MIRROR=../shared/data dvc repro download      # data/prepared, once
    python -m scripts.batch_size_study --seeds 0 1 2   # ~7 min per seed on 2 CPU cores

Trains every norm at each per-step batch size with the pipeline's recipe (params.yaml) and model, on a fixed
random subset of the training set, for the same number of epochs at every batch size, with the learning rate
scaled linearly with the batch size (lr = train.lr * batch / train.batch_size, as in the GN paper; Muon's
train.muon_lr likewise). BatchNorm uses the batch's statistics while training and its running statistics at
test time (eval mode), as usual.
Every model is tested on the whole test set. Writes a CSV and a markdown table of test error per norm and batch
size, and a plot of test error vs batch size with one line per norm.

With `--seeds 0 1 2` every point is run per seed and the table and plot show mean ± std. Each finished run
is added to the CSV at once; a re-run reuses the CSV's rows of the same recipe (params, epochs, subset), so
an interrupted study continues and more seeds can be added later. Rows of another recipe are replaced.

Runs are independent, so they go to `--jobs` worker processes (1 thread each by default: at batch 2 one
thread is faster per step than two on this CPU, so two 1-thread jobs do twice the work).
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import dataclasses
import hashlib
import json
import os
import signal
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context, parent_process
from pathlib import Path
from typing import Callable

import torch

from stages import paths
from stages.data import Dataset, load_dataset
from stages.io import write_csv, write_text
from stages.model import NORMS
from stages.params import MAX_EPOCHS, Params, load_params
from stages.plot import COLORS, LABELS, save_figure
from stages.train import seeded_model, to_splits
from stages.trainer import Split, evaluate_split, fit

import matplotlib.pyplot as plt  # noqa: E402  (after stages.plot, which selects the file-only Agg backend)

BATCH_SIZES = (2, 4, 8, 16, 32, 128)  # per SGD step (the GN paper: 32 down to 2)
OUT_CSV = Path("metrics/batch_size.csv")
OUT_MD = Path("metrics/batch_size.md")
OUT_PNG = paths.PLOTS / "batch_size.png"
EVAL_BATCH = 512  # test-time batch: eval mode makes it irrelevant to the result, only to speed


def subset(split: Split, n: int, seed: int) -> Split:
    """A fixed random subset of n images (the same for every norm and batch size)."""
    if not 0 < n <= len(split.x):
        raise ValueError(f"--train-images must be in 1..{len(split.x)}, got {n}")
    idx = torch.randperm(len(split.x), generator=torch.Generator().manual_seed(seed))[:n]
    return Split(split.x[idx], split.y[idx])


def scaled_recipe(params: Params, batch_size: int, epochs: int):
    """The pipeline's train params at another batch size: lr and muon_lr scaled linearly, fixed epoch count."""
    cfg, scale = params.train, batch_size / params.train.batch_size
    return dataclasses.replace(cfg, batch_size=batch_size, epochs=epochs, lr=cfg.lr * scale,
                               muon_lr=cfg.muon_lr * scale)


def recipe_id(params: Params, epochs: int, train_images: int) -> str:
    """Short hash of everything a run's result depends on besides (norm, batch size, seed): finished rows in
    the CSV are reused only by a study with the same recipe id."""
    what = {"data": params.data.source, "model": dataclasses.asdict(params.model), "epochs": epochs,
            "train": dataclasses.asdict(params.train), "train_images": train_images, "subset_seed": params.seed}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def train_and_test(norm: str, params: Params, ds: Dataset, train: Split, test: Split, batch_size: int,
                   epochs: int, seed: int) -> dict:
    """One run: fresh model, `epochs` epochs at `batch_size` (init, shuffling, augmentation seeded by `seed`),
    then the test error in eval mode (BN: running statistics)."""
    cfg = scaled_recipe(params, batch_size, epochs)
    model, _, gen = seeded_model(params, norm, ds, train.x, seed)
    rows = fit(model, train, None, cfg, gen, desc=f"{norm} batch {batch_size}")  # no per-epoch test pass
    seconds = sum(r["seconds"] for r in rows)
    train_acc = rows[-1]["train_acc"]
    test_loss, test_acc = evaluate_split(model, test, dataclasses.replace(cfg, batch_size=EVAL_BATCH), cfg.tta)
    return {"recipe": recipe_id(params, epochs, len(train.x)), "norm": norm, "batch_size": batch_size, "seed": seed,
            "lr": cfg.lr, "epochs": epochs, "train_images": len(train.x), "test_images": len(test.x),
            "train_acc": train_acc, "test_acc": test_acc, "test_error": 1 - test_acc, "test_loss": test_loss,
            "seconds": seconds}


COLUMNS = {"recipe": str, "norm": str, "batch_size": int, "seed": int, "lr": float, "epochs": int,
           "train_images": int, "test_images": int, "train_acc": float, "test_acc": float, "test_error": float,
           "test_loss": float, "seconds": float}


def read_rows(path: Path) -> list[dict]:
    """Rows of a previous (possibly interrupted) study's CSV; [] if there is none."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: typ(r[k]) for k, typ in COLUMNS.items()} for r in csv.DictReader(f)]


def sort_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (NORMS.index(r["norm"]), r["batch_size"], r["seed"]))


_WORKER: dict = {}  # per worker process: params, dataset and splits, loaded once by _init


PR_SET_PDEATHSIG = 1  # from Linux's <linux/prctl.h>


def die_with_parent() -> bool:
    """Ask Linux to SIGTERM this process when its parent ends, however it ends. Why: a study stopped by
    SIGTERM (`pkill -f`) or SIGKILL ended only its main process; its worker processes trained on, fighting the
    next run for the 2 cores (one experiment ran 4x slower until they were killed by hand). Ctrl-C reaches the
    whole process group and was fine. Returns False where there is no prctl (macOS, Windows)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return False
    parent = parent_process()
    if parent is not None and parent.pid != os.getppid():  # it ended before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _init(params_path: str, prepared: str, train_images: int, threads: int) -> None:
    die_with_parent()
    torch.set_num_threads(threads)
    params = load_params(Path(params_path))
    ds = load_dataset(Path(prepared))
    train, test = to_splits(ds, torch.device("cpu"))
    _WORKER.update(params=params, ds=ds, train=subset(train, train_images, params.seed), test=test)


def _run(job: tuple[str, int, int, int]) -> dict:
    norm, batch_size, epochs, seed = job
    w = _WORKER
    row = train_and_test(norm, w["params"], w["ds"], w["train"], w["test"], batch_size, epochs, seed)
    print(f"{norm} batch {batch_size:4d} seed {seed}: test error {100 * row['test_error']:.2f} % "
          f"({row['seconds']:.0f} s)", flush=True)
    return row


def run_study(norms, batch_sizes, seeds, epochs: int, train_images: int, jobs: int, threads: int,
              done: list[dict], on_row: Callable[[list[dict]], None], params_path: Path = paths.PARAMS,
              prepared: Path = paths.PREPARED) -> list[dict]:
    """Every (norm, batch size, seed) run not already in `done` (rows of the same recipe), smallest batches
    (the slowest) first; `on_row(rows so far)` after each finished run. Returns the sorted rows."""
    recipe = recipe_id(load_params(params_path), epochs, train_images)
    have = {(r["norm"], r["batch_size"], r["seed"]): r for r in done if r["recipe"] == recipe}
    todo = [(n, b, epochs, s) for b in sorted(batch_sizes) for s in seeds for n in norms if (n, b, s) not in have]
    rows = [have[n, b, s] for n in norms for b in batch_sizes for s in seeds if (n, b, s) in have]
    if todo:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init,
                                 initargs=(str(params_path), str(prepared), train_images, threads)) as pool:
            for fut in as_completed([pool.submit(_run, job) for job in todo]):
                rows.append(fut.result())
                on_row(sort_rows(rows))
    return sort_rows(rows)


def summarize(rows: list[dict]) -> dict[tuple[str, int], tuple[float, float, int]]:
    """(norm, batch size) -> (mean, sample std (0 for one seed), number of seeds) of the test error."""
    out = {}
    for key in dict.fromkeys((r["norm"], r["batch_size"]) for r in rows):
        errs = [r["test_error"] for r in rows if (r["norm"], r["batch_size"]) == key]
        out[key] = (statistics.fmean(errs), statistics.stdev(errs) if len(errs) > 1 else 0.0, len(errs))
    return out


def markdown(rows: list[dict]) -> str:
    stats = summarize(rows)
    sizes = sorted({b for _, b in stats})
    norms = [n for n in NORMS if any(k[0] == n for k in stats)]
    seeds = sorted({r["seed"] for r in rows})
    first = rows[0]
    cell = lambda m, s, k: f"{100 * m:.2f} ± {100 * s:.2f}" if k > 1 else f"{100 * m:.2f}"  # noqa: E731
    lines = [f"Test error (%) on the {first['test_images']} test images after {first['epochs']} epochs on a fixed "
             f"random {first['train_images']} of the training images; lr = {first['lr'] / first['batch_size']:.6g}"
             f" x batch size; seeds {', '.join(map(str, seeds))}" + (" (mean ± sample std)." if len(seeds) > 1
                                                                     else "."), "",
             "| norm | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for n in norms:
        lines.append(f"| {n} | " + " | ".join(cell(*stats[n, b]) if (n, b) in stats else "" for b in sizes) + " |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict]):
    stats = summarize(rows)
    fig, ax = plt.subplots(figsize=(7, 4.6), constrained_layout=True)
    for norm in NORMS:
        keys = sorted(k for k in stats if k[0] == norm)
        if keys:
            ax.errorbar([b for _, b in keys], [100 * stats[k][0] for k in keys], [100 * stats[k][1] for k in keys],
                        marker="o", capsize=3, color=COLORS[norm], label=LABELS[norm])
    sizes = sorted({b for _, b in stats})
    seeds = len({r["seed"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set(xlabel="batch size (images per SGD step; lr scaled linearly)", ylabel="test error (%)",
           title=f"Test error vs batch size: {rows[0]['epochs']} epochs on {rows[0]['train_images']} images"
                 + (f", mean ± std of {seeds} seeds" if seeds > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    ap.add_argument("--norms", nargs="+", choices=NORMS, default=list(NORMS))
    ap.add_argument("--seeds", type=int, nargs="+", help="run seeds (default: params.yaml's seed)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-images", type=int, default=10_000, help="random training subset (fixed by seed)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--csv", type=Path, default=OUT_CSV)
    ap.add_argument("--md", type=Path, default=OUT_MD)
    ap.add_argument("--png", type=Path, default=OUT_PNG)
    args = ap.parse_args(argv)
    if not 1 <= args.epochs <= MAX_EPOCHS:
        ap.error(f"--epochs must be in 1..{MAX_EPOCHS}, got {args.epochs}")
    if any(not 2 <= b <= args.train_images for b in args.batch_sizes):
        ap.error(f"--batch-sizes must each be in 2..--train-images ({args.train_images}): BN needs 2 images "
                 f"per batch; got {args.batch_sizes}")
    seeds = args.seeds if args.seeds is not None else [load_params(paths.PARAMS).seed]
    rows = run_study(args.norms, args.batch_sizes, seeds, args.epochs, args.train_images, args.jobs, args.threads,
                     read_rows(args.csv), lambda rows: write_csv(args.csv, rows))
    write_text(args.md, markdown(rows))
    save_figure(figure(rows), args.png)
    print(markdown(rows), end="")
    print(f"wrote {args.csv}, {args.md}, {args.png}")


if __name__ == "__main__":
    main()
