"""Whole-batch data augmentation on uint8 tensors (airbench style: tensor ops, no per-image PIL work)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions i (may lie up to size-1 outside [0, size)) into [0, size) by mirroring at the borders
    without repeating the edge pixel: the indexing of torch's 'reflect' padding (-1 -> 1, size -> size-2)."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Image i of x (N, C, H, W), any dtype, moved down by dy[i] and right by dx[i] pixels (int tensors of
    shape (N,), |shift| < size), the uncovered border filled by mirroring (torch's 'reflect' padding), then
    mirrored left-right where flip[i] (bool (N,), optional).

    One gather straight from x through mirrored indices: the same pixels as padding, cropping and flipping,
    without writing a padded or flipped copy of the data set (those copies cost ~15 % of an epoch here).
    Returns (N, C, H, W) in channels_last memory layout, the layout the model runs in.
    """
    n, _, h, w = x.shape
    dev = x.device
    rows = reflect_index(torch.arange(h, device=dev) - dy[:, None], h)[:, :, None]  # (N, H, 1)
    cols = reflect_index(torch.arange(w, device=dev) - dx[:, None], w)  # (N, W)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # output column j reads column w-1-j
    # advanced indexing puts the indexed dims first: (N, H, W, C) -> a channels_last view (N, C, H, W)
    return x[torch.arange(n, device=dev)[:, None, None], :, rows, cols[:, None, :]].permute(0, 3, 1, 2)


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to `pad` pixels each way (reflect padding) and horizontal flip of every image.

    x: uint8 (N, C, H, W) on any device; gen: a generator on the same device. Returns a new uint8 tensor
    of the same shape (channels_last layout); the order of images (and so their labels) is unchanged.
    """
    n = len(x)
    dev = x.device
    dy = dx = torch.zeros(n, dtype=torch.long, device=dev)
    if pad > 0:  # the crop offset o in 0..2*pad of a padded image is a shift of pad - o
        dy = pad - torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
        dx = pad - torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    return translate(x, dy, dx, flip)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one random `size` x `size` square per image: rows top..top+size-1 and columns likewise, with its
    centre (top + size // 2, ...) uniform over the image, so the square may be clipped at the border."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    top = torch.randint(0, h, (n,), generator=gen, device=dev) - size // 2
    left = torch.randint(0, w, (n,), generator=gen, device=dev) - size // 2
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_y = (ys >= top[:, None]) & (ys < top[:, None] + size)  # (N, H)
    in_x = (xs >= left[:, None]) & (xs < left[:, None] + size)  # (N, W)
    mask = in_y[:, :, None] & in_x[:, None, :]  # (N, H, W)
    return x.masked_fill(mask[:, None], 0)


def downscale(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float images x (N, C, H, W) shrunk so that their longer side is `size` pixels (bilinear with
    antialiasing: each output pixel averages the input pixels it covers, so no aliasing); images whose
    longer side is already `size` or less are returned unchanged. Keeps x's memory layout.

    Why: progressive resizing. The first epochs train on 24x24 instead of 32x32 images, 0.56 of the pixels,
    so they take about 30 % less time per epoch here (measured), and the net still ends at full resolution.
    """
    h, w = x.shape[-2:]
    if max(h, w) <= size:
        return x
    scale = size / max(h, w)
    out = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                        antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) else out
