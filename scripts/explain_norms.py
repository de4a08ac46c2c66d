"""How BatchNorm, GroupNorm and LayerNorm compute, by hand, checked against PyTorch's layers.

    python -m scripts.explain_norms [--figure plots/norm_axes.png]

A fixed tensor x of 2 images x 4 channels x 2x2 pixels is normalized three ways with plain tensor ops:
  BatchNorm:          one mean/variance per channel c, over (images, H, W)         -> 4 statistics
  GroupNorm(2 groups): one per image n and group of 2 channels, over (C/2, H, W)   -> 2 x 2 statistics
  LayerNorm:          one per image n, over (C, H, W)  (= GroupNorm(1, C))          -> 2 statistics
The script prints the statistics and outputs as tables and asserts they equal nn.BatchNorm2d (training
mode), nn.GroupNorm(2, 4) and nn.GroupNorm(1, 4) (affine weights at their initial 1 and 0).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

EPS = 1e-5  # PyTorch's default epsilon for all three layers


def example() -> torch.Tensor:
    """x[n, c, h, w] = distinct small integers, channel c of image n shifted by 10*c + 40*n."""
    n, c, h, w = torch.meshgrid(torch.arange(2), torch.arange(4), torch.arange(2), torch.arange(2), indexing="ij")
    return (40 * n + 10 * c + 2 * h + w + (c * w) % 3).float()


def by_hand(x: torch.Tensor, dims: tuple[int, ...], shape: tuple[int, ...]):
    """Mean and biased variance over `dims` of x viewed as `shape`, and the normalized x."""
    v = x.reshape(shape)
    mean = v.mean(dim=dims, keepdim=True)
    var = ((v - mean) ** 2).mean(dim=dims, keepdim=True)  # biased, as the layers use for normalizing
    return mean, var, ((v - mean) / torch.sqrt(var + EPS)).reshape(x.shape)


def batch_norm(x):
    return by_hand(x, (0, 2, 3), x.shape)  # per channel


def group_norm(x, groups):
    n, c, h, w = x.shape
    return by_hand(x, (2, 3, 4), (n, groups, c // groups, h, w))  # per image and group


def layer_norm(x):
    return group_norm(x, 1)


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(s.rjust(wd) for s, wd in zip(r, width)) + " |"  # noqa: E731
    return "\n".join([f"**{title}**", "", line(cells[0]), "|" + "|".join("-" * (wd + 2) for wd in width) + "|"]
                     + [line(r) for r in cells[1:]])


def report(x: torch.Tensor) -> str:
    out = [table("Input x (2 images x 4 channels x 2x2), flattened per channel",
                 ["image", "channel", "x[h=0,w=0]", "x[0,1]", "x[1,0]", "x[1,1]"],
                 [[n, c, *x[n, c].flatten().tolist()] for n in range(2) for c in range(4)])]
    m, v, _ = batch_norm(x)
    out.append(table("BatchNorm: statistics per channel, over 2 images x 2x2 pixels (8 values each)",
                     ["channel", "mean", "variance"], [[c, m.flatten()[c].item(), v.flatten()[c].item()]
                                                       for c in range(4)]))
    m, v, _ = group_norm(x, 2)
    out.append(table("GroupNorm (2 groups): statistics per image and group of 2 channels (8 values each)",
                     ["image", "group (channels)", "mean", "variance"],
                     [[n, f"{g} ({2 * g},{2 * g + 1})", m[n, g].item(), v[n, g].item()]
                      for n in range(2) for g in range(2)]))
    m, v, _ = layer_norm(x)
    out.append(table("LayerNorm = GroupNorm(1, C): statistics per image, over 4 channels x 2x2 (16 values)",
                     ["image", "mean", "variance"], [[n, m[n].item(), v[n].item()] for n in range(2)]))
    outs = {"BN": batch_norm(x)[2], "GN": group_norm(x, 2)[2], "LN": layer_norm(x)[2]}
    out.append(table("Normalized output at pixel (h=0, w=0)", ["image", "channel", "BN", "GN", "LN"],
                     [[n, c, *(o[n, c, 0, 0].item() for o in outs.values())] for n in range(2) for c in range(4)]))
    return "\n\n".join(out)


def check_against_pytorch(x: torch.Tensor) -> None:
    """Raise AssertionError unless every hand-computed output equals PyTorch's layer output."""
    layers = {"BatchNorm2d": (nn.BatchNorm2d(4).train(), batch_norm(x)[2]),
              "GroupNorm(2, 4)": (nn.GroupNorm(2, 4), group_norm(x, 2)[2]),
              "GroupNorm(1, 4) (LayerNorm)": (nn.GroupNorm(1, 4), layer_norm(x)[2])}
    for name, (layer, ours) in layers.items():
        with torch.no_grad():
            theirs = layer(x)
        assert torch.allclose(ours, theirs, atol=1e-5), f"{name}: by-hand result differs from PyTorch"


def axes_figure(path: str) -> None:
    """Which (image, channel) cells share one set of statistics: shaded = one normalization set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    n_img, n_ch = 4, 6
    sets = {"BatchNorm: one channel, all images": lambda n, c: c == 1,
            "GroupNorm (3 groups): one image, one group": lambda n, c: n == 1 and c in (2, 3),
            "LayerNorm: one image, all channels": lambda n, c: n == 1,
            }
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    for ax, (title, member) in zip(axes, sets.items()):
        for n in range(n_img):
            for c in range(n_ch):
                ax.add_patch(Rectangle((c, n), 1, 1, facecolor="tab:blue" if member(n, c) else "white",
                                       edgecolor="gray"))
        ax.set(xlim=(0, n_ch), ylim=(n_img, 0), title=title, xlabel="channel C", ylabel="image N (batch)")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_aspect("equal")
    fig.suptitle("Each cell stands for all H x W pixels of one channel of one image; the shaded cells are "
                 "reduced together to one mean and variance")
    fig.savefig(path, dpi=110, metadata={"Software": None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figure", help="also write the reduction-axes figure to this PNG")
    args = ap.parse_args()
    x = example()
    check_against_pytorch(x)
    print(report(x))
    print("\nAll three hand computations equal PyTorch's layers (atol 1e-5).")
    if args.figure:
        axes_figure(args.figure)


if __name__ == "__main__":
    main()
