"""Stage `plot`: learning curves of the three norms overlaid, feature percentiles over training, confusion
matrices side by side, and per norm a grid of misclassified test images. PNGs under plots/."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from stages import cli, paths  # noqa: E402
from stages.io import atomic_path  # noqa: E402
from stages.model import NORMS  # noqa: E402

LABELS = {"bn": "BatchNorm", "gn": "GroupNorm", "ln": "LayerNorm (GroupNorm(1, C))"}
COLORS = {"bn": "tab:blue", "gn": "tab:orange", "ln": "tab:green"}
# (column in plots/train/<norm>.csv, panel title, y label, scale for display)
PANELS = [("train_loss", "Train loss", "cross-entropy (nats, with label smoothing)", 1.0),
          ("test_loss", "Test loss (every 2nd test image, no TTA)", "cross-entropy (nats)", 1.0),
          ("train_acc", "Train accuracy", "accuracy (%)", 100.0),
          ("test_acc", "Test accuracy (every 2nd test image, no TTA)", "accuracy (%)", 100.0)]


def parse_log(text: str) -> dict[str, np.ndarray]:
    """A per-epoch training log's CSV text as {column: float array}."""
    rows = list(csv.DictReader(io.StringIO(text)))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def read_log(path: Path) -> dict[str, np.ndarray]:
    return parse_log(Path(path).read_text())


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def low_res_span(log: dict[str, np.ndarray]) -> tuple[int, int, int] | None:
    """(first epoch, last epoch, pixels) of the epochs that trained on downscaled images (progressive
    resizing), or None. Why shade them: the per-epoch test passes are always full size, so the curves jump
    where training switches to full size. Logs written before the train_size column existed have none."""
    size = log.get("train_size")
    if size is None:
        return None
    low = log["epoch"][size < size.max()]
    return (int(low.min()), int(low.max()), int(size.min())) if len(low) else None


def curves_figure(logs: dict[str, dict[str, np.ndarray]]):
    """2x2 panels (train/test loss, train/test accuracy), all norms overlaid, final values in the legend (not at
    the line ends, where the three nearly equal values overprinted each other)."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    low_res = low_res_span(next(iter(logs.values())))  # one recipe: every norm has the same schedule
    for ax, (col, title, ylabel, scale) in zip(axes.flat, PANELS):
        if low_res is not None:
            first, last, px = low_res
            ax.axvspan(first - 0.5, last + 0.5, color="0.9", zorder=0)
            ax.text((first + last) / 2, 0.02, f"trained on\n{px} px images", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color="0.35")
        for norm, log in logs.items():
            y = log[col] * scale
            final = f"{y[-1]:.2f}" + (" %" if scale != 1.0 else "")
            ax.plot(log["epoch"], y, marker="o", ms=3, color=COLORS[norm], label=f"{LABELS[norm]}: {final}")
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(title="final value", fontsize=8)
    fig.suptitle("Same residual CNN, same recipe: only the normalization layer differs")
    return fig


def features_figure(features: dict[str, dict[str, np.ndarray]]):
    """Per norm, the 1/20/80/99th percentiles of the last block's features over epochs (GN paper style)."""
    fig, axes = plt.subplots(1, len(features), figsize=(5.2 * len(features), 4.4), sharey=True,
                             constrained_layout=True)
    for ax, (norm, f) in zip(np.atleast_1d(axes), features.items()):
        ax.fill_between(f["epoch"], f["p1"], f["p99"], color=COLORS[norm], alpha=0.15, label="1st-99th")
        ax.fill_between(f["epoch"], f["p20"], f["p80"], color=COLORS[norm], alpha=0.4, label="20th-80th")
        for col in ("p1", "p20", "p80", "p99"):
            ax.plot(f["epoch"], f[col], color=COLORS[norm], lw=1)
        ax.set(title=LABELS[norm], xlabel="epoch", ylabel="feature value (last block, before pooling)")
        ax.grid(alpha=0.3)
        ax.legend(title="percentiles", fontsize=8)
    fig.suptitle("Feature distribution during training: 256 fixed test images, model in eval mode")
    return fig


def confusion_figure(npz, classes: list[str]):
    fig, axes = plt.subplots(1, len(NORMS), figsize=(6.2 * len(NORMS), 6), constrained_layout=True)
    for ax, norm in zip(axes, NORMS):
        cm = npz[f"{norm}_confusion"]
        ConfusionMatrixDisplay(cm, display_labels=classes).plot(ax=ax, colorbar=False, xticks_rotation=60,
                                                                cmap="Blues", values_format="d")
        acc = np.trace(cm) / cm.sum() * 100
        ax.set_title(f"{LABELS[norm]}: {acc:.2f} % correct, {int(npz[f'{norm}_misclassified'])} wrong")
    fig.suptitle("Confusion matrices on the test set (rows: true class, columns: predicted)")
    return fig


def misclassified_figure(npz, norm: str, classes: list[str]):
    """Up to 10 misclassified images in 2 rows of 5, most confidently wrong first."""
    images = npz[f"{norm}_images"]  # uint8 (k, C, H, W)
    fig, axes = plt.subplots(2, 5, figsize=(11, 5.4), constrained_layout=True)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        img = images[i].transpose(1, 2, 0)
        ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                  interpolation="nearest")
        ax.set_title(f"true: {classes[npz[f'{norm}_actual'][i]]}\npred: {classes[npz[f'{norm}_predicted'][i]]}",
                     fontsize=9)
    total = int(npz[f"{norm}_misclassified"])
    fig.suptitle(f"{LABELS[norm]}: {total} misclassified test images; the {len(images)} most confident mistakes")
    return fig


def main() -> None:
    logs = {norm: read_log(paths.train_log(norm)) for norm in NORMS}
    save_figure(curves_figure(logs), paths.CURVES_PNG)
    save_figure(features_figure({norm: read_log(paths.features_log(norm)) for norm in NORMS}), paths.FEATURES_PNG)
    with np.load(paths.MISCLASSIFIED) as npz:
        classes = [str(c) for c in npz["classes"]]
        save_figure(confusion_figure(npz, classes), paths.CONFUSION_PNG)
        for norm in NORMS:
            save_figure(misclassified_figure(npz, norm, classes), paths.misclassified_png(norm))
    print(f"wrote {paths.CURVES_PNG}, {paths.FEATURES_PNG}, {paths.CONFUSION_PNG} and {len(NORMS)} "
          f"misclassified grids")


if __name__ == "__main__":
    cli.run(main)
