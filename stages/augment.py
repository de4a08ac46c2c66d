"""Whole-batch data augmentation on uint8 tensors (airbench style: tensor ops, no per-image PIL work)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random `pad`-pixel translation (reflect padding) and horizontal flip of every image.

    x: uint8 (N, C, H, W) on any device; gen: a generator on the same device. Returns a new uint8 tensor
    of the same shape; the order of images (and so their labels) is unchanged.
    """
    n, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        # reflect-pad in float (uint8 reflect padding is not implemented everywhere), exact for uint8 values
        xp = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # (N, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # (N, 1, W)
        # advanced indexing puts the indexed dims first: (N, H, W, C) -> back to (N, C, H, W)
        x = xp[torch.arange(n, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x).contiguous()


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one random `size` x `size` square per image (the square may be clipped at the border)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (n,), generator=gen, device=dev)
    cx = torch.randint(0, w, (n,), generator=gen, device=dev)
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_y = (ys - cy[:, None]).abs() <= size // 2  # (N, H)
    in_x = (xs - cx[:, None]).abs() <= size // 2  # (N, W)
    mask = in_y[:, :, None] & in_x[:, None, :]  # (N, H, W)
    return x.masked_fill(mask[:, None], 0)
