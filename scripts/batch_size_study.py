"""Does BatchNorm degrade at small batches while GroupNorm and LayerNorm do not? (GN paper, Figure 1)

    DATA_MIRROR=../shared/data dvc repro download      # data/prepared, once
    python -m scripts.batch_size_study                  # ~25 min on 2 CPU cores with the defaults below

Trains every norm at each per-step batch size with the pipeline's recipe (params.yaml) and model, on a fixed
random subset of the training set, for the same number of epochs at every batch size, with the learning rate
scaled linearly with the batch size (lr = train.lr * batch / train.batch_size, as in the GN paper). BatchNorm
uses the batch's statistics while training and its running statistics at test time (eval mode), as usual.
Every model is tested on the whole test set. Writes a CSV and a markdown table of test error per norm and batch
size, and a plot of test error vs batch size with one line per norm.

Runs are independent, so they go to `--jobs` worker processes (1 thread each by default: at batch 2 one
thread is faster per step than two on this CPU, so two 1-thread jobs do twice the work).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from stages import paths  # noqa: E402
from stages.checkpoint import model_config, new_model  # noqa: E402
from stages.data import Dataset, load_dataset  # noqa: E402
from stages.io import write_csv, write_text  # noqa: E402
from stages.model import NORMS  # noqa: E402
from stages.params import MAX_EPOCHS, Params, load_params  # noqa: E402
from stages.plot import COLORS, LABELS, save_figure  # noqa: E402
from stages.train import channel_stats, to_splits  # noqa: E402
from stages.trainer import Split, epoch_batches, evaluate_split, make_optimizer, train_epoch  # noqa: E402

BATCH_SIZES = (2, 4, 8, 16, 32, 128, 512)  # per SGD step; 512 is the pipeline's default
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
    """The pipeline's train params at another batch size: lr scaled linearly, fixed epoch count."""
    cfg = params.train
    return dataclasses.replace(cfg, batch_size=batch_size, epochs=epochs, lr=cfg.lr * batch_size / cfg.batch_size)


def train_and_test(norm: str, params: Params, ds: Dataset, train: Split, test: Split, batch_size: int,
                   epochs: int) -> dict:
    """One run: fresh model (seeded by params.seed), `epochs` epochs at `batch_size`, then the test error."""
    cfg = scaled_recipe(params, batch_size, epochs)
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    model = new_model(model_config(params, norm, ds), *channel_stats(train.x)).to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg, epochs * epoch_batches(len(train.x), batch_size)[1])
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        train_loss, train_acc = train_epoch(model, train, cfg, opt, sched, gen, epoch, f"{norm} batch {batch_size}")
    seconds = time.perf_counter() - t0
    test_loss, test_acc = evaluate_split(model, test, dataclasses.replace(cfg, batch_size=EVAL_BATCH), cfg.tta_flip)
    return {"norm": norm, "batch_size": batch_size, "lr": cfg.lr, "epochs": epochs, "train_images": len(train.x),
            "test_images": len(test.x), "seed": params.seed, "train_acc": train_acc, "test_acc": test_acc, "test_error": 1 - test_acc,
            "test_loss": test_loss, "seconds": seconds}


_WORKER: dict = {}  # per worker process: params, dataset and splits, loaded once by _init


def _init(params_path: str, prepared: str, train_images: int, threads: int) -> None:
    torch.set_num_threads(threads)
    params = load_params(Path(params_path))
    ds = load_dataset(Path(prepared))
    train, test = to_splits(ds, torch.device("cpu"))
    _WORKER.update(params=params, ds=ds, train=subset(train, train_images, params.seed), test=test)


def _run(job: tuple[str, int, int]) -> dict:
    norm, batch_size, epochs = job
    w = _WORKER
    row = train_and_test(norm, w["params"], w["ds"], w["train"], w["test"], batch_size, epochs)
    print(f"{norm} batch {batch_size:4d}: test error {100 * row['test_error']:.2f} % "
          f"({row['seconds']:.0f} s)", flush=True)
    return row


def run_study(norms, batch_sizes, epochs: int, train_images: int, jobs: int, threads: int,
              params_path: Path = paths.PARAMS, prepared: Path = paths.PREPARED) -> list[dict]:
    """Every (norm, batch size) run, smallest batches (the slowest) first; rows sorted by norm, batch size."""
    todo = [(n, b, epochs) for b in sorted(batch_sizes) for n in norms]
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init,
                             initargs=(str(params_path), str(prepared), train_images, threads)) as pool:
        rows = list(pool.map(_run, todo))
    return sorted(rows, key=lambda r: (NORMS.index(r["norm"]), r["batch_size"]))


def markdown(rows: list[dict]) -> str:
    sizes = sorted({r["batch_size"] for r in rows})
    norms = [n for n in NORMS if any(r["norm"] == n for r in rows)]
    err = {(r["norm"], r["batch_size"]): r["test_error"] for r in rows}
    first = rows[0]
    lines = [f"Test error (%) on the {first['test_images']} test images after {first['epochs']} epochs on a fixed "
             f"random {first['train_images']} of the training images (seed {first['seed']}); lr = "
             f"{first['lr'] / first['batch_size']:.6g} x batch size.", "",
             "| norm | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for n in norms:
        lines.append(f"| {n} | " + " | ".join(f"{100 * err[n, b]:.2f}" for b in sizes) + " |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict]):
    fig, ax = plt.subplots(figsize=(7, 4.6), constrained_layout=True)
    for norm in NORMS:
        mine = [r for r in rows if r["norm"] == norm]
        if mine:
            ax.plot([r["batch_size"] for r in mine], [100 * r["test_error"] for r in mine], marker="o",
                    color=COLORS[norm], label=LABELS[norm])
    sizes = sorted({r["batch_size"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set(xlabel="batch size (images per SGD step; lr scaled linearly)", ylabel="test error (%)",
           title=f"Test error vs batch size: {rows[0]['epochs']} epochs on {rows[0]['train_images']} images")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    ap.add_argument("--norms", nargs="+", choices=NORMS, default=list(NORMS))
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
    rows = run_study(args.norms, args.batch_sizes, args.epochs, args.train_images, args.jobs, args.threads)
    write_csv(args.csv, rows)
    write_text(args.md, markdown(rows))
    save_figure(figure(rows), args.png)
    print(markdown(rows), end="")
    print(f"wrote {args.csv}, {args.md}, {args.png}")


if __name__ == "__main__":
    main()
