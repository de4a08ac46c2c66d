"""The real 60,000-image archive from ../shared/data (present on the developers' machines and CI)."""
import json

import pytest

from stages.data import CIFAR10_JPEG, MIRROR_ENV
from tests.conftest import SHARED_DATA, copy_project, run_module

ARCHIVE = SHARED_DATA / CIFAR10_JPEG.filename


@pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present")
def test_download_stage_verifies_and_prepares_the_real_archive(tmp_path):
    repo = copy_project(tmp_path / "p")
    r = run_module(repo, "stages.download", **{MIRROR_ENV: str(SHARED_DATA)})
    assert r.returncode == 0, r.stderr
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert meta["fingerprint_sha256"] == CIFAR10_JPEG.fingerprint == \
        "8dff00d1ad8e077c031697778bb41279a7f28b29566c954af8ae18ef1112f222"
    assert meta["train_images"] == 50_000 and meta["test_images"] == 10_000 and meta["files"] == 60_000
    assert meta["image_shape_chw"] == [3, 32, 32]
    assert meta["classes"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                               "truck"]
    assert not (repo / "data/raw").exists()  # read straight from the mirror, nothing copied
