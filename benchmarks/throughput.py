"""Training throughput: our trainer vs a course-style baseline, same model, same data, same machine.

    python -m benchmarks.throughput [--images 4096] [--norm bn]

Baseline (what the course notebooks do): per-image PIL transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, RandAugment applied with p=0.25, ToTensor, Normalize) in a torchvision DataLoader with
2 worker processes, batch 64, fp32, contiguous (NCHW) tensors, SGD.
Ours: uint8 tensors in memory, whole-batch crop+flip, channels_last, bf16 autocast where the CPU has bf16
instructions (fp32 elsewhere, as the train stage), the params.yaml batch.
Both train the params.yaml model on the first --images training images of data/prepared (run
`dvc repro download` first); each is timed over one pass after a short warm-up. The process first tells glibc's
malloc to keep freed memory (trainer.keep_freed_memory), as the train stage does: every side runs with it.
To show where the ratio comes from, the baseline's training steps are also timed alone: the same fp32 batch-64
steps on images normalized in memory beforehand (no PIL, no workers), i.e. the baseline with a free loader.
And to show how far it could go, our convolutions are timed alone: each conv of the model, forward and backward
(input and weight gradients, as a training step computes them) on inputs of the shape, dtype and layout it sees
in our step, under the same autocast and batch. With every other op (norms, GELU, pooling, loss, optimizer,
augmentation) free, our step could take no less, so baseline time over that time bounds the speed-up from above
for this model on this machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from stages import paths
from stages.checkpoint import model_config, new_model
from stages.data import load_dataset
from stages.params import load_params
from stages.train import channel_stats, cpu_model
from stages.trainer import (Split, autocast, epoch_batches, keep_freed_memory, make_optimizer, precision_name,
                            train_epoch)


class PilImages(Dataset):
    """Course style: every image is turned into a PIL image and transformed one at a time."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean, std):
        self.x, self.y = x.transpose(0, 2, 3, 1), y  # HWC for PIL
        self.tf = transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.RandAugment()], p=0.25), transforms.ToTensor(),
            transforms.Normalize((mean / 255).tolist(), (std / 255).tolist())])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.tf(Image.fromarray(self.x[i])), int(self.y[i])


def baseline_pass(model, loader) -> int:
    """One fp32 epoch the course way; the model sees normalized floats (its own scaling is set to identity)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    n = 0
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(yb)
    return n


def time_baseline(config, x, y, mean, std) -> float:
    model = new_model(config)
    loader = DataLoader(PilImages(x, y, mean.numpy(), std.numpy()), batch_size=64, shuffle=True,
                        num_workers=2, persistent_workers=True)
    baseline_pass(model, DataLoader(PilImages(x[:256], y[:256], mean.numpy(), std.numpy()), batch_size=64))
    t0 = time.perf_counter()
    n = baseline_pass(model, loader)
    return n / (time.perf_counter() - t0)


def time_baseline_steps(config, x, y, mean, std) -> float:
    """The baseline's fp32 batch-64 training steps alone, on tensors normalized beforehand (no loader)."""
    model = new_model(config)
    xs = (torch.from_numpy(x).float() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    batches = [(xs[i:i + 64], torch.from_numpy(y[i:i + 64])) for i in range(0, len(xs), 64)]
    baseline_pass(model, batches[:4])  # warm-up
    t0 = time.perf_counter()
    n = baseline_pass(model, batches)
    return n / (time.perf_counter() - t0)


def time_ours(params, config, x, y, mean, std) -> float:
    torch.manual_seed(0)
    model = new_model(config, mean, std).to(memory_format=torch.channels_last)
    # full-size images (no progressive resizing): the same work per image as the baseline's
    cfg = dataclasses.replace(params.train, epochs=1, low_res=0.0)
    data = Split(torch.from_numpy(x), torch.from_numpy(y))
    opt = make_optimizer(model, cfg, 10_000)
    gen = torch.Generator().manual_seed(0)
    train_epoch(model, Split(data.x[:1024], data.y[:1024]), cfg, opt, gen, 1)  # warm-up
    t0 = time.perf_counter()
    train_epoch(model, data, cfg, opt, gen, 1)
    bs, steps = epoch_batches(len(x), cfg.batch_size)
    return bs * steps / (time.perf_counter() - t0)


def conv_inputs(model: nn.Module, xb: torch.Tensor, bf16: bool) -> list[tuple[nn.Conv2d, torch.Tensor]]:
    """Each conv of the model with a random stand-in for the input it sees in a training step: same shape, dtype,
    memory layout and need for a gradient (the stem's image needs none). Found by one forward pass with hooks."""
    seen = []

    def record(conv, inputs, _out):
        x = inputs[0]
        # randn_like keeps x's shape, dtype, device and strides (so its channels_last layout)
        seen.append((conv, torch.randn_like(x).requires_grad_(x.requires_grad)))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with autocast(xb.device, bf16):
            model(xb)
    finally:
        for h in hooks:
            h.remove()
    return seen


def conv_pass(convs: list[tuple[nn.Conv2d, torch.Tensor]], bf16: bool) -> None:
    """Forward and backward of every conv once, each on its stand-in input: the convolutions of one step."""
    for conv, x in convs:
        with autocast(x.device, bf16):
            out = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
        wanted = [x, conv.weight] if x.requires_grad else [conv.weight]
        torch.autograd.grad(out, wanted, torch.ones_like(out))


def time_convs(params, config, x, mean, std) -> float:
    """Our convolutions alone, as many steps as time_ours trains: images per second."""
    model = new_model(config, mean, std).to(memory_format=torch.channels_last)
    bs, steps = epoch_batches(len(x), params.train.batch_size)
    xb = torch.from_numpy(x[:bs]).float().contiguous(memory_format=torch.channels_last)
    convs = conv_inputs(model, xb, params.train.bf16)
    conv_pass(convs, params.train.bf16)  # warm-up: oneDNN builds its kernels
    t0 = time.perf_counter()
    for _ in range(steps):
        conv_pass(convs, params.train.bf16)
    return bs * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--norm", default="bn", choices=["bn", "gn", "ln"])
    args = ap.parse_args()
    # as the train stage does, before the data is loaded; process-wide, so the baseline's steps and its forked
    # DataLoader workers run with it too. Without it, on the AMD host our epoch took 13.7-21.6 s instead of 11.1 s
    keep_freed_memory()
    params = load_params(paths.PARAMS)
    ds = load_dataset(paths.PREPARED)
    x, y = ds.x_train[: args.images], ds.y_train[: args.images]
    mean, std = channel_stats(torch.from_numpy(x))
    config = model_config(params, args.norm, ds)
    base = time_baseline(config, x, y, mean, std)
    steps = time_baseline_steps(config, x, y, mean, std)
    ours = time_ours(params, config, x, y, mean, std)
    convs = time_convs(params, config, x, mean, std)
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; norm {args.norm}, {args.images} images; "
          f"ours in {precision_name(torch.device('cpu'), params.train.bf16)}")
    print(f"course-style baseline: {base:8.0f} img/s  ({50_000 / base:6.1f} s per 50k-image epoch)")
    print(f"  its steps alone:     {steps:8.0f} img/s  ({50_000 / steps:6.1f} s per 50k-image epoch; "
          f"the loader's share of the baseline: {1 - base / steps:.0%})")
    print(f"this pipeline:         {ours:8.0f} img/s  ({50_000 / ours:6.1f} s per 50k-image epoch)")
    print(f"  its convolutions alone: {convs:5.0f} img/s  ({50_000 / convs:6.1f} s per 50k-image epoch; "
          f"the speed-up if every other op were free: {convs / base:.1f}x)")
    print(f"speed-up: {ours / base:.1f}x (over the baseline's steps alone: {ours / steps:.1f}x)")


if __name__ == "__main__":
    main()
