"""Saving and loading models: atomic writes, weights_only loads, and a config check on every load."""
from __future__ import annotations

from pathlib import Path

import torch

from stages.data import Dataset
from stages.io import atomic_path
from stages.model import Net, build_model
from stages.params import Params


class CheckpointError(RuntimeError):
    """A saved model is missing, unreadable, or of another norm/architecture than expected."""


def model_config(params: Params, norm: str, ds: Dataset) -> dict:
    """Everything needed to rebuild the architecture; stored with the weights and checked on load."""
    return {"norm": norm, "widths": list(params.model.widths), "depth": list(params.model.depth),
            "block_convs": params.model.block_convs,
            "stem_pool": params.model.stem_pool, "head_width": params.model.head_width,
            "weight_std": params.model.weight_std, "gn_groups": params.model.gn_groups,
            "in_channels": int(ds.x_train.shape[1]), "classes": len(ds.classes)}


def new_model(config: dict, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> Net:
    """The untrained net of a model_config (its keys are build_model's keywords), with input statistics."""
    return build_model(**config, mean=mean, std=std)


def save(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: Path) -> dict:
    """torch.load with weights_only=True: plain tensors and containers only, no code runs from the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: run its training stage first (dvc repro)") from None
    except Exception as e:  # pickle/zip errors of a corrupt or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None


def load_checked(path: Path, expect: dict) -> dict:
    """The checkpoint at path, refused unless its config equals `expect` (same norm and architecture)."""
    ckpt = load(path)
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if config != expect:
        raise CheckpointError(f"{path} holds a model with config {config}, but params.yaml and the data "
                              f"ask for {expect}; re-run its training stage (dvc repro)")
    return ckpt


def load_model(path: Path, expect: dict) -> Net:
    """The trained model saved at path (see load_checked), on the CPU and in eval mode (BN uses its
    running statistics)."""
    ckpt = load_checked(path, expect)
    model = new_model(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_test_logits(path: Path, expect: dict, tta: str, n_test: int) -> torch.Tensor:
    """The test-set logits (n_test, classes) the training stage computed for the model at path with test-time
    augmentation `tta` (refused for another config or tta, see load_checked, or another test-set size)."""
    ckpt = load_checked(path, expect)
    logits = ckpt.get("test_logits")
    if ckpt.get("tta") != tta or not isinstance(logits, torch.Tensor):
        raise CheckpointError(f"{path} holds no test predictions made with train.tta={tta!r} (it has "
                              f"{ckpt.get('tta')!r}); re-run its training stage (dvc repro)")
    if logits.shape != (n_test, expect["classes"]):
        raise CheckpointError(f"{path} holds test logits of shape {tuple(logits.shape)}, but the test set has "
                              f"{n_test} images of {expect['classes']} classes; re-run its training stage")
    return logits
