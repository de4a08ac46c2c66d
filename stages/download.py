"""Stage `download`: fetch data.source, verify it, write the prepared uint8 arrays and their record."""
from __future__ import annotations

from stages import cli, paths
from stages.data import load_source, save_dataset
from stages.params import load_params


def main() -> None:
    params = load_params(paths.PARAMS)
    ds = load_source(params.data.source, paths.RAW)
    save_dataset(ds, paths.PREPARED)
    print(f"prepared {len(ds.y_train)} train + {len(ds.y_test)} test images of shape "
          f"{tuple(ds.x_train.shape[1:])}, {len(ds.classes)} classes, from {ds.meta['location']}")


if __name__ == "__main__":
    cli.run(main)
