import hashlib
import io
import pickle
import socket
import tarfile
import threading
import zipfile

import numpy as np
import pytest

from stages import data as D
from stages.data import DataError, Remote, content_fingerprint, load_source
from tests.conftest import make_image_folder, pack_tar_gz, pack_zip, png_bytes


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch):
    monkeypatch.delenv(D.MIRROR_ENV, raising=False)


def test_fingerprint_is_the_documented_sha256_of_sorted_lines():
    files = {("train", "b", "2.jpg"): b"yy", ("test", "a", "1.jpg"): b"x"}
    lines = sorted(f"{s}/{c}/{n} {hashlib.sha256(b).hexdigest()}" for (s, c, n), b in files.items())
    assert content_fingerprint(files) == hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize("pack", ["dir", "tar.gz", "zip", "tar-no-top"])
def test_image_folder_sources_load(tmp_path, image_folder, pack):
    src = {"dir": lambda: image_folder,
           "tar.gz": lambda: pack_tar_gz(image_folder, tmp_path / "a.tar.gz"),
           "zip": lambda: pack_zip(image_folder, tmp_path / "a.zip"),
           "tar-no-top": lambda: pack_tar_gz(image_folder, tmp_path / "b.tar", top=None)}[pack]()
    ds = load_source(str(src), tmp_path / "cache")
    assert ds.x_train.shape == (12, 3, 8, 8) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (6, 3, 8, 8)
    assert ds.classes == ["cat", "dog"] and sorted(set(ds.y_train.tolist())) == [0, 1]
    assert len(ds.meta["fingerprint_sha256"]) == 64


def test_pixels_and_labels_survive_decoding(tmp_path, image_folder):
    from PIL import Image
    ds = load_source(str(image_folder), tmp_path)
    first_dog = np.asarray(Image.open(image_folder / "train" / "dog" / "0000.png"))
    i = int(np.flatnonzero(ds.y_train == 1)[0])
    assert np.array_equal(ds.x_train[i].transpose(1, 2, 0), first_dog)


def test_grayscale_folder_has_one_channel(tmp_path):
    folder = make_image_folder(tmp_path / "g", mode="L")
    assert load_source(str(folder), tmp_path).x_train.shape[1] == 1


def test_save_and_load_round_trip(tmp_path, image_folder):
    ds = load_source(str(image_folder), tmp_path)
    D.save_dataset(ds, tmp_path / "prep")
    back = D.load_dataset(tmp_path / "prep")
    assert np.array_equal(back.x_train, ds.x_train) and back.classes == ds.classes
    assert back.meta["source"] == str(image_folder)


def test_missing_prepared_data_says_run_download(tmp_path):
    with pytest.raises(DataError, match="run the download stage"):
        D.load_dataset(tmp_path)


def test_digits_source_needs_no_download(tmp_path):
    ds = load_source("digits", tmp_path)
    assert ds.x_train.shape[1:] == (1, 8, 8) and len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.classes == [str(i) for i in range(10)] and ds.x_train.max() == 255


# ---------------------------------------------------------------- HTTP and mirror

def test_download_over_http_then_cached(tmp_path, image_folder, http_server):
    pack_tar_gz(image_folder, http_server.folder / "set.tar.gz")
    url = http_server.url("set.tar.gz")
    ds = load_source(url, tmp_path / "cache")
    assert ds.x_train.shape[0] == 12 and (tmp_path / "cache" / "set.tar.gz").is_file()
    load_source(url, tmp_path / "cache")
    assert len(http_server.requests) == 1  # the second run used the cache


def test_cut_off_download_resumes_with_range(tmp_path, image_folder, http_server):
    archive = pack_tar_gz(image_folder, http_server.folder / "set.tar.gz")
    http_server.cut_after = 1
    out = D.http_download(http_server.url("set.tar.gz"), tmp_path / "set.tar.gz")
    assert out.read_bytes() == archive.read_bytes()
    assert http_server.requests[1]["range"] is not None and not (tmp_path / "set.tar.gz.part").exists()


def test_download_that_keeps_failing_gives_up_clearly(tmp_path, image_folder, http_server):
    pack_tar_gz(image_folder, http_server.folder / "set.tar.gz")
    http_server.cut_after = 10
    with pytest.raises(DataError, match="after 3 attempts.*connection closed"):
        D.http_download(http_server.url("set.tar.gz"), tmp_path / "set.tar.gz")
    assert not (tmp_path / "set.tar.gz").exists()


def test_http_error_is_reported(tmp_path, http_server):
    with pytest.raises(DataError, match="HTTP 404"):
        load_source(http_server.url("missing.tar.gz"), tmp_path)


def test_unreachable_host_says_how_to_work_offline(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(DataError, match=f"failed after 3 attempts.*put x.tar.gz in a folder and set "
                                        f"{D.MIRROR_ENV}.*digits"):
        load_source(f"http://127.0.0.1:{port}/x.tar.gz", tmp_path)


def test_server_that_never_answers_times_out(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)  # accepts connections, never replies
    try:
        with pytest.raises(DataError, match="timed out|Timeout"):
            D.http_download(f"http://127.0.0.1:{srv.getsockname()[1]}/x", tmp_path / "x", retries=2, timeout=0.3)
    finally:
        srv.close()


def test_mirror_is_used_before_the_network(tmp_path, image_folder, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = pack_tar_gz(image_folder, mirror / "CIFAR-10-images-test.tar.gz")
    files = D.split_layout(dict(D.iter_images(archive)), "x")
    remote = Remote(url="http://127.0.0.1:9/unreachable.tar.gz", filename=archive.name,
                    fingerprint=content_fingerprint(files))
    monkeypatch.setattr(D, "CIFAR10_JPEG", remote)
    monkeypatch.setenv(D.MIRROR_ENV, str(mirror))
    ds = load_source("cifar10-jpeg", tmp_path / "cache")
    assert ds.meta["fingerprint_sha256"] == remote.fingerprint and ds.x_train.shape[0] == 12


def test_fingerprint_mismatch_says_expected_and_got(tmp_path, image_folder, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (image_folder / "train" / "cat" / "0000.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    archive = pack_tar_gz(image_folder, mirror / "c.tar.gz")
    monkeypatch.setattr(D, "CIFAR10_JPEG", Remote(url="http://127.0.0.1:9/c.tar.gz", filename="c.tar.gz",
                                                  fingerprint="0" * 64))
    monkeypatch.setenv(D.MIRROR_ENV, str(mirror))
    with pytest.raises(DataError, match=f"expected {'0' * 64}, got [0-9a-f]{{64}}"):
        load_source("cifar10-jpeg", tmp_path)
    assert archive.exists()


def test_download_that_fails_verification_is_not_cached(tmp_path, image_folder, http_server, monkeypatch):
    pack_tar_gz(image_folder, http_server.folder / "c.tar.gz")
    monkeypatch.setattr(D, "CIFAR10_JPEG", Remote(url=http_server.url("c.tar.gz"), filename="c.tar.gz",
                                                  fingerprint="0" * 64))
    with pytest.raises(DataError, match="fingerprint mismatch"):
        load_source("cifar10-jpeg", tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no archive, no temporary file


def test_mirror_that_is_not_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(D.MIRROR_ENV, str(tmp_path / "nope"))
    with pytest.raises(DataError, match="is not a directory"):
        load_source("cifar10-jpeg", tmp_path)


# ---------------------------------------------------------------- official CIFAR-10 python format

def cifar_archive(path, rng):
    """A tiny archive in the official layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    members = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = 4
        members[name] = pickle.dumps({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                      "labels": rng.integers(0, 10, n).tolist()})
    members["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]})
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return {k: hashlib.md5(v).hexdigest() for k, v in members.items()}


def patch_cifar(monkeypatch, md5s, archive_md5, url):
    from torchvision.datasets import CIFAR10
    monkeypatch.setattr(CIFAR10, "url", url)
    monkeypatch.setattr(CIFAR10, "tgz_md5", archive_md5)
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                          "md5": md5s["batches.meta"]})


def test_official_cifar10_archive_over_http(tmp_path, http_server, monkeypatch):
    archive = http_server.folder / "cifar-10-python.tar.gz"
    md5s = cifar_archive(archive, np.random.default_rng(0))
    patch_cifar(monkeypatch, md5s, D.file_md5(archive), http_server.url("cifar-10-python.tar.gz"))
    ds = load_source("cifar10", tmp_path / "cache")
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.classes == [f"c{i}" for i in range(10)] and ds.meta["md5"] == D.file_md5(archive)


def test_official_cifar10_from_mirror_and_md5_mismatch(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-10-python.tar.gz"
    md5s = cifar_archive(archive, np.random.default_rng(1))
    monkeypatch.setenv(D.MIRROR_ENV, str(mirror))
    patch_cifar(monkeypatch, md5s, D.file_md5(archive), "http://127.0.0.1:9/unreachable")
    assert load_source("cifar10", tmp_path / "cache").x_train.shape[0] == 20
    patch_cifar(monkeypatch, md5s, "f" * 32, "http://127.0.0.1:9/unreachable")
    expected = f"md5 mismatch: expected {'f' * 32}, got {D.file_md5(archive)}; it is not the official archive: replace it"
    with pytest.raises(DataError, match=expected):
        load_source("cifar10", tmp_path / "cache")


def test_official_cifar10_batch_md5_checked_by_torchvision(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-10-python.tar.gz"
    md5s = cifar_archive(archive, np.random.default_rng(2))
    md5s["test_batch"] = "0" * 32
    monkeypatch.setenv(D.MIRROR_ENV, str(mirror))
    patch_cifar(monkeypatch, md5s, D.file_md5(archive), "http://127.0.0.1:9/unreachable")
    with pytest.raises(DataError, match="corrupted"):
        load_source("cifar10", tmp_path / "cache")


# ---------------------------------------------------------------- bad and unsafe inputs

def test_unknown_source_name(tmp_path):
    with pytest.raises(DataError, match="no such file or directory, and not a known source name"):
        load_source("cifar100", tmp_path)


def test_unsupported_scheme(tmp_path):
    with pytest.raises(DataError, match="unsupported URL scheme 'ftp'"):
        load_source("ftp://example.org/x.tar.gz", tmp_path)


def test_not_an_archive(tmp_path):
    f = tmp_path / "x.tar.gz"
    f.write_bytes(b"this is not an archive at all" * 10)
    with pytest.raises(DataError, match="not a directory, .tar"):
        load_source(str(f), tmp_path)


def test_truncated_archive(tmp_path, image_folder):
    archive = pack_tar_gz(image_folder, tmp_path / "a.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_source(str(archive), tmp_path)


@pytest.mark.parametrize("name,kind,link,match", [
    ("top/../../evil/train/a/1.png", tarfile.REGTYPE, "", "unsafe member path"),
    ("/etc/train/a/1.png", tarfile.REGTYPE, "", "unsafe member path"),
    ("top/train/a/1.png", tarfile.SYMTYPE, "../../../../etc/passwd", "pointing outside"),
    ("top/train/a/dev", tarfile.CHRTYPE, "", "device"),
])
def test_unsafe_tar_members_are_refused(tmp_path, name, kind, link, match):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    with pytest.raises(DataError, match=match):
        load_source(str(path), tmp_path)


def test_zip_traversal_is_refused(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../train/a/1.png", png_bytes(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match="unsafe member path"):
        load_source(str(path), tmp_path)


def test_folder_without_classes(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    with pytest.raises(DataError, match="no images found under train"):
        load_source(str(tmp_path / "empty"), tmp_path)


def test_train_and_test_classes_differ(tmp_path, image_folder):
    (image_folder / "test" / "dog").rename(image_folder / "test" / "wolf")
    with pytest.raises(DataError, match=r"train classes \['cat', 'dog'\] differ from test classes \['cat', 'wolf'\]"):
        load_source(str(image_folder), tmp_path)


def test_unreadable_image_is_named(tmp_path, image_folder):
    (image_folder / "train" / "dog" / "0002.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image train/dog/0002.png"):
        load_source(str(image_folder), tmp_path)


def test_mixed_sizes_are_refused(tmp_path, image_folder):
    from PIL import Image
    Image.new("RGB", (9, 8)).save(image_folder / "test" / "cat" / "0001.png")
    with pytest.raises(DataError, match="test/cat/0001.png is 9x8 but .* is 8x8"):
        load_source(str(image_folder), tmp_path)


def test_several_top_folders_are_refused(tmp_path):
    make_image_folder(tmp_path / "src" / "a")
    make_image_folder(tmp_path / "src" / "b")
    with pytest.raises(DataError, match="several folders"):
        load_source(str(tmp_path / "src"), tmp_path)


def test_http_download_in_a_thread_is_unaffected_by_partial_leftovers(tmp_path, image_folder, http_server):
    """A stale .part from an earlier, different file is replaced when the server ignores the Range."""
    archive = pack_tar_gz(image_folder, http_server.folder / "set.tar.gz")
    dest = tmp_path / "set.tar.gz"
    dest.with_name("set.tar.gz.part").write_bytes(archive.read_bytes()[:10])
    t = threading.Thread(target=D.http_download, args=(http_server.url("set.tar.gz"), dest))
    t.start()
    t.join(30)
    assert dest.read_bytes() == archive.read_bytes()


def test_prepared_data_is_byte_identical_when_rewritten(tmp_path, image_folder):
    ds = load_source(str(image_folder), tmp_path)
    D.save_dataset(ds, tmp_path / "a")
    import time
    time.sleep(2.1)  # zip timestamps have 2-second resolution
    D.save_dataset(load_source(str(image_folder), tmp_path), tmp_path / "b")
    for name in ("data.npz", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
