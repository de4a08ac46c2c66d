"""Stages `train_bn`, `train_gn`, `train_ln`: `python -m stages.train <norm>` trains one normalization.

Writes models/<norm>.pt (DVC-cached: weights, config, and the test-set logits with the recipe's test-time
augmentation), plots/train/<norm>.csv (per-epoch log; its test columns on every second test image, see
CURVE_STRIDE), plots/features/<norm>.csv
(per-epoch percentiles of the last block's features on 256 fixed test images) and metrics/train_<norm>.json.
After every epoch a resume checkpoint goes to checkpoints/<norm>.pt; a re-run with the same params continues
from it, a re-run with other params starts afresh.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import time

import torch

from stages import cli, paths
from stages.data import Dataset, load_dataset
from stages.checkpoint import CheckpointError, load, model_config, new_model, save
from stages.io import write_csv, write_json
from stages.model import NORMS, Net, count_params, dirac_init_
from stages.params import Params, load_params
from stages.trainer import PERCENTILES, OneCycleSGD, Split, fit, keep_freed_memory, loss_and_accuracy, pick_device, \
    precision_name, predict


LOG_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "train_size"]
FEATURE_COLUMNS = ["epoch"] + [f"p{p}" for p in PERCENTILES]
FEATURE_PROBE = 256  # first test images, a fixed batch on which the feature percentiles are recorded
# The per-epoch test curve (plain model) is measured on every CURVE_STRIDE-th test image: 5,000 of CIFAR-10's
# 10,000, all classes alike (the test set is stored class by class). Why: the pass over all 10,000 cost ~10 s
# per norm, a few percent of a run that must fit in 10 minutes; the reported final figures use all of them.
CURVE_STRIDE = 2


def curve_split(test: Split) -> Split:
    """The images and labels the per-epoch test curve is measured on (a fixed subset of the test split)."""
    return Split(test.x[::CURVE_STRIDE], test.y[::CURVE_STRIDE])


def fingerprint(params: Params, norm: str, ds: Dataset) -> str:
    """Identifies a training run: what it reads (seed, model, train) plus the norm and the data, the log's
    columns (a checkpoint holds the rows logged so far, so one from a version with other columns cannot resume)
    and the optimizer whose state it holds."""
    relevant = {"norm": norm, "seed": params.seed, "model": dataclasses.asdict(params.model), "log": LOG_COLUMNS,
                "optimizer": OneCycleSGD.__name__,  # the optimizer state's format (torch.optim's before)
                "train": dataclasses.asdict(params.train), "data": ds.meta.get("fingerprint_sha256") or
                ds.meta.get("md5")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def to_splits(ds: Dataset, device: torch.device) -> tuple[Split, Split]:
    def split(x, y):
        return Split(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
    return split(ds.x_train, ds.y_train), split(ds.x_test, ds.y_test)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (shape (C,)) of uint8 images (N, C, H, W), in pixel units."""
    xf = x.float()
    return xf.mean(dim=(0, 2, 3)).cpu(), xf.std(dim=(0, 2, 3)).clamp_min(1.0).cpu()


def seeded_model(params: Params, norm: str, ds: Dataset, train_x: torch.Tensor, seed: int
                 ) -> tuple[Net, dict, torch.Generator]:
    """The start of a training run: (model, its config, generator). `seed` seeds torch's global RNG (weight
    init) and a new generator on train_x's device (shuffling, augmentation); the model's input statistics
    come from train_x (uint8 (N, C, H, W)); channels_last on that device; with train.dirac_init the convs
    after the stem start as partial identities."""
    torch.manual_seed(seed)
    gen = torch.Generator(device=train_x.device).manual_seed(seed)
    config = model_config(params, norm, ds)
    model = new_model(config, *channel_stats(train_x))
    if params.train.dirac_init:
        dirac_init_(model)
    return model.to(train_x.device, memory_format=torch.channels_last), config, gen


def train_norm(norm: str, params: Params, ds: Dataset, device: torch.device) -> dict:
    """Train one norm (resuming if a matching checkpoint exists); writes log, model, metrics."""
    run_id = fingerprint(params, norm, ds)
    train, test = to_splits(ds, device)
    model, config, gen = seeded_model(params, norm, ds, train.x, params.seed)
    rows, start, opt_state, elapsed = [], 0, None, 0.0
    resume = load_resume(norm, run_id)
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        gen.set_state(resume["gen_state"])
        torch.set_rng_state(resume["torch_rng"])
        rows, start, opt_state, elapsed = resume["rows"], resume["epoch"], resume["opt_state"], resume["elapsed"]
        print(f"{norm}: resuming after epoch {start} from {paths.checkpoint_path(norm)}")
    t0 = time.perf_counter() - elapsed
    print(f"{norm}: training on {device_name(device)} in {precision_name(device, params.train.bf16)}", flush=True)

    def on_epoch(epoch: int, row: dict, opt_state: dict) -> None:
        rows.append(row)
        print(f"{norm} epoch {epoch}/{params.train.epochs}: train acc {row['train_acc']:.4f} "
              f"test acc {row['test_acc']:.4f} (no TTA; {row['seconds']:.1f} s)", flush=True)
        write_csv(paths.train_log(norm), [{k: r[k] for k in LOG_COLUMNS} for r in rows])
        write_csv(paths.features_log(norm), [{k: r[k] for k in FEATURE_COLUMNS} for r in rows])
        save(paths.checkpoint_path(norm), {
            "run_id": run_id, "epoch": epoch, "rows": rows, "state_dict": model.state_dict(),
            "opt_state": opt_state, "gen_state": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "elapsed": time.perf_counter() - t0})

    fit(model, train, curve_split(test), params.train, gen, on_epoch, start, opt_state, desc=norm,
        probe=test.x[:FEATURE_PROBE])
    # The reported test figures: the final model with the recipe's test-time augmentation. The logits are saved
    # with the weights, so `evaluate` summarizes this one pass instead of repeating it (~5 s per norm here).
    logits = predict(model, test.x, params.train.batch_size, params.train.tta, params.train.bf16)
    test_loss, test_acc = loss_and_accuracy(logits, test.y)
    wall = time.perf_counter() - t0
    save(paths.model_path(norm), {"config": config, "state_dict": model.state_dict(),
                                  "tta": params.train.tta, "test_logits": logits.cpu()})
    last = rows[-1]
    metrics = {"train_loss": last["train_loss"], "train_acc": last["train_acc"], "test_loss": test_loss,
               "test_acc": test_acc, "tta": params.train.tta, "params": count_params(model), "epochs": len(rows),
               "wall_seconds": wall, "seconds_per_epoch": sum(r["seconds"] for r in rows) / len(rows),
               "device": device_name(device)}
    write_json(paths.train_metrics(norm), metrics)
    paths.checkpoint_path(norm).unlink(missing_ok=True)
    return metrics


def load_resume(norm: str, run_id: str) -> dict | None:
    """The resume checkpoint of this exact run, or None (a stale one from other params is removed)."""
    path = paths.checkpoint_path(norm)
    if not path.exists():
        return None
    try:
        ckpt = load(path)
    except CheckpointError as e:  # e.g. cut off while written by an older version: start afresh
        print(f"{norm}: ignoring {e}")
        ckpt = None
    if ckpt is None or ckpt.get("run_id") != run_id:
        if ckpt is not None:
            print(f"{norm}: params or data changed since {path} was written; training from scratch")
        path.unlink()
        return None
    return ckpt


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}: {cpu_model()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("norm", choices=NORMS)
    norm = parser.parse_args(argv).norm
    params = load_params(paths.PARAMS)
    keep_freed_memory()  # before the data is loaded: 5-12 % faster training steps on glibc
    ds = load_dataset(paths.PREPARED)
    device = pick_device()
    metrics = train_norm(norm, params, ds, device)
    print(f"{norm}: test accuracy {metrics['test_acc']:.4f} after {metrics['epochs']} epochs "
          f"({metrics['wall_seconds']:.0f} s on {metrics['device']})")


if __name__ == "__main__":
    cli.run(main)
