"""Every path the pipeline reads or writes, relative to the project root (where dvc runs the stages)."""
from pathlib import Path

PARAMS = Path("params.yaml")
RAW = Path("data/raw")  # download cache (not tracked by git or DVC; $DATA_MIRROR is looked in first)
PREPARED = Path("data/prepared")  # download stage output: data.npz + meta.json
MODELS = Path("models")
CHECKPOINTS = Path("checkpoints")  # per-epoch resume state of an unfinished training (not a DVC output)
MISCLASSIFIED = Path("data/eval/misclassified.npz")
EVAL_METRICS = Path("metrics/eval.json")
PLOTS = Path("plots")


def model_path(norm: str) -> Path:
    return MODELS / f"{norm}.pt"


def checkpoint_path(norm: str) -> Path:
    return CHECKPOINTS / f"{norm}.pt"


def train_log(norm: str) -> Path:
    return PLOTS / "train" / f"{norm}.csv"


def features_log(norm: str) -> Path:
    return PLOTS / "features" / f"{norm}.csv"


def train_metrics(norm: str) -> Path:
    return Path("metrics") / f"train_{norm}.json"


def confusion_rows(norm: str) -> Path:
    return PLOTS / "confusion" / f"{norm}.csv"


def misclassified_png(norm: str) -> Path:
    return PLOTS / f"misclassified_{norm}.png"


CURVES_PNG = PLOTS / "curves.png"
CONFUSION_PNG = PLOTS / "confusion.png"
FEATURES_PNG = PLOTS / "features.png"
