"""The README's results table, rendered from the committed metrics files (so the two cannot disagree).

    python -m scripts.results_table
"""
from __future__ import annotations

import json
from pathlib import Path

from stages import paths
from stages.model import NORMS

NAMES = {"bn": "BatchNorm", "gn": "GroupNorm", "ln": "LayerNorm"}


def table(root: Path = Path(".")) -> str:
    ev = json.loads((root / paths.EVAL_METRICS).read_text())["per_norm"]
    train = {n: json.loads((root / paths.train_metrics(n)).read_text()) for n in NORMS}
    lines = ["| norm | test acc | test loss | train acc | train loss | parameters | misclassified (of 10,000) "
             "| epochs | s / epoch | wall time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in NORMS:
        t = train[n]
        lines.append(f"| {NAMES[n]} ({n}) | **{100 * ev[n]['test_acc']:.2f} %** | {ev[n]['test_loss']:.4f} | "
                     f"{100 * t['train_acc']:.2f} % | {t['train_loss']:.4f} | {t['params']:,} | "
                     f"{ev[n]['misclassified']:,} | {t['epochs']} | {t['seconds_per_epoch']:.1f} | "
                     f"{t['wall_seconds'] / 60:.1f} min |")
    devices = sorted({t["device"] for t in train.values()})
    lines.append("")
    lines.append(f"Machine: {', '.join(devices)}.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
