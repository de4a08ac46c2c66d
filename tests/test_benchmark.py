"""The throughput benchmark's timings run on tiny data and give finite, positive rates; its conv-only timing sees
every conv of the model with the input a training step gives it."""
import dataclasses
import math

import numpy as np
import torch

from benchmarks.throughput import conv_inputs, time_baseline, time_baseline_steps, time_convs, time_ours
from stages.checkpoint import new_model
from stages.params import load_params
from tests.conftest import ROOT

CONFIG = {"norm": "bn", "widths": [8, 16, 16], "depth": [0, 1], "stem_pool": True, "head_width": 0,
          "weight_std": True, "gn_groups": 4, "in_channels": 3, "classes": 10}


def test_each_timing_trains_and_reports_images_per_second():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (192, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 192).astype(np.int64)
    mean, std = torch.full((3,), 120.0), torch.full((3,), 60.0)
    params = load_params(ROOT / "params.yaml")
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, batch_size=64))
    rates = [time_baseline(CONFIG, x, y, mean, std), time_baseline_steps(CONFIG, x, y, mean, std),
             time_ours(params, CONFIG, x, y, mean, std), time_convs(params, CONFIG, x, mean, std)]
    assert all(math.isfinite(r) and r > 0 for r in rates)


def test_conv_inputs_match_what_each_conv_sees_in_a_step():
    model = new_model(CONFIG).to(memory_format=torch.channels_last)
    xb = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last) * 255
    convs = conv_inputs(model, xb, bf16=False)
    assert [conv for conv, _ in convs] == [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # stem 32x32 pooled to 16x16; the first stage keeps 16x16 (stem_pool), the second halves to 8x8
    assert [tuple(x.shape) for _, x in convs] == [(4, 3, 32, 32), (4, 8, 16, 16), (4, 16, 16, 16), (4, 16, 8, 8)]
    # the image needs no gradient; every later conv's input does, as in a training step
    assert [x.requires_grad for _, x in convs] == [False, True, True, True]
    assert all(x.is_contiguous(memory_format=torch.channels_last) for _, x in convs)
    assert not any(p.grad is not None for p in model.parameters())  # the recording pass trains nothing
