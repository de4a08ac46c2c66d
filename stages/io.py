"""Atomic output writing: every file is written under a temporary name and renamed into place, so a crash
or Ctrl-C never leaves a half-written output that a later stage or dvc would take as good."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed entry timestamp: the same arrays always give the same bytes


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    """rows: dicts with the same keys, written in the order of the first row's keys."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez (uncompressed, readable by np.load) but byte-for-byte reproducible.

    np.savez stamps the current time into every zip entry, so re-running a stage would change its output's
    hash and make DVC re-run everything downstream for nothing.
    """
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH), "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
