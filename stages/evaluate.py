"""Stage `evaluate`: every norm's test figures, confusion matrices (scikit-learn), misclassified examples.

The test-set logits come from models/<norm>.pt, where the training stage saved them (its final pass with the
recipe's test-time augmentation): one pass per model, so metrics/train_<norm>.json and this stage agree.

metrics/eval.json reports the model selected by the top-level `norm` param under fixed keys (test_acc,
test_loss, misclassified), so `dvc exp run -S norm=gn` + `dvc metrics diff` compares norms, plus every
norm's figures under per_norm.<norm>.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix

from stages import cli, paths
from stages.checkpoint import load_test_logits, model_config
from stages.data import load_dataset
from stages.io import write_csv, write_json, write_npz
from stages.model import NORMS
from stages.params import load_params

EXAMPLES = 10  # misclassified images kept per norm


def most_confident_mistakes(probs: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of up to k misclassified samples, the most confidently wrong first (ties by index)."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    order = np.argsort(-probs[wrong, pred[wrong]], kind="stable")
    return wrong[order[:k]]


def summarize(logits: torch.Tensor, y: torch.Tensor, classes: int) -> dict:
    """Loss, accuracy, misclassified count and the scikit-learn confusion matrix (rows: actual)."""
    pred = logits.argmax(1)
    cm = confusion_matrix(y.numpy(), pred.numpy(), labels=list(range(classes)))
    return {"test_loss": F.cross_entropy(logits, y).item(), "test_acc": float(np.trace(cm) / cm.sum()),
            "misclassified": int(cm.sum() - np.trace(cm)), "confusion": cm, "pred": pred.numpy(),
            "probs": logits.softmax(1).numpy()}


def confusion_rows(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> list[dict]:
    """One row per test image in the form DVC's confusion template reads."""
    return [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(y, pred)]


def main() -> None:
    params = load_params(paths.PARAMS)
    ds = load_dataset(paths.PREPARED)
    y = torch.from_numpy(ds.y_test)
    per_norm, arrays = {}, {"classes": np.array(ds.classes)}
    for norm in NORMS:
        path = paths.model_path(norm)
        logits = load_test_logits(path, model_config(params, norm, ds), params.train.tta, len(y))
        s = summarize(logits, y, len(ds.classes))
        per_norm[norm] = {k: s[k] for k in ("test_acc", "test_loss", "misclassified")}
        write_csv(paths.confusion_rows(norm), confusion_rows(ds.y_test, s["pred"], ds.classes))
        idx = most_confident_mistakes(s["probs"], ds.y_test, EXAMPLES)
        arrays.update({f"{norm}_images": ds.x_test[idx], f"{norm}_actual": ds.y_test[idx],
                       f"{norm}_predicted": s["pred"][idx], f"{norm}_confusion": s["confusion"],
                       f"{norm}_misclassified": np.array(s["misclassified"])})
        print(f"{norm}: test accuracy {s['test_acc']:.4f}, {s['misclassified']} misclassified")
    write_npz(paths.MISCLASSIFIED, arrays)
    selected = per_norm[params.norm]
    write_json(paths.EVAL_METRICS, {"norm": params.norm, **selected, "per_norm": per_norm})
    print(f"selected norm {params.norm}: test accuracy {selected['test_acc']:.4f}")


if __name__ == "__main__":
    cli.run(main)
