"""The throughput benchmark's three timings run on tiny data and give finite, positive rates."""
import dataclasses
import math

import numpy as np
import torch

from benchmarks.throughput import time_baseline, time_baseline_steps, time_ours
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
             time_ours(params, CONFIG, x, y, mean, std)]
    assert all(math.isfinite(r) and r > 0 for r in rates)
