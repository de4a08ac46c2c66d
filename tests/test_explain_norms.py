import subprocess
import sys

import pytest
import torch

from scripts import explain_norms as E
from tests.conftest import ROOT


def test_script_prints_tables_and_matches_pytorch(tmp_path):
    fig = tmp_path / "axes.png"
    r = subprocess.run([sys.executable, "-m", "scripts.explain_norms", "--figure", str(fig)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "equal PyTorch's layers" in r.stdout
    for title in ("BatchNorm: statistics per channel", "GroupNorm (2 groups)", "LayerNorm = GroupNorm(1, C)"):
        assert title in r.stdout
    assert fig.stat().st_size > 10_000


def test_statistic_counts_follow_the_reduction_axes():
    x = E.example()
    assert E.batch_norm(x)[0].numel() == 4  # per channel
    assert E.group_norm(x, 2)[0].numel() == 4  # per image x group
    assert E.layer_norm(x)[0].numel() == 2  # per image


def test_check_catches_a_wrong_hand_computation(monkeypatch):
    # the unbiased variance is a classic mistake: the layers normalize with the biased one
    def wrong(x):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=True)
        return mean, var, (x - mean) / torch.sqrt(var + E.EPS)
    monkeypatch.setattr(E, "batch_norm", wrong)
    with pytest.raises(AssertionError, match="BatchNorm2d"):
        E.check_against_pytorch(E.example())
