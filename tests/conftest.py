"""Shared test helpers: generated image folders and archives, and a loopback HTTP server."""
from __future__ import annotations

import http.server
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=(6, 3), size=(8, 8), fmt="png",
                      mode="RGB", seed=0) -> Path:
    """root/{train,test}/<class>/NNNN.<fmt> with random images; per_class = (train, test) counts."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i:04d}.{fmt}")
    return root


def pack_tar_gz(folder: Path, out: Path, top: str | None = "top") -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=top or ".")
    return out


def pack_zip(folder: Path, out: Path, top: str = "top") -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{top}/{f.relative_to(folder).as_posix()}")
    return out


class Server:
    """Serves files from a folder on 127.0.0.1 with HTTP Range support.

    cut_after: number of first responses to break off half-way (tests resume).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.cut_after = 0
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = server.folder / self.path.lstrip("/")
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after > 0:
                    server.cut_after -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def http_server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    server = Server(folder)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "imgs")


def copy_project(dest: Path) -> Path:
    """The project's pipeline files (stages, dvc.yaml, params.yaml) copied into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "stages", dest / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def digits_project(dest: Path, **train) -> Path:
    """A project copy on scikit-learn's digits with data/prepared already made; `train` overrides train params."""
    repo = copy_project(dest)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = "digits"
    params["train"].update(train)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = run_module(repo, "stages.download")
    assert r.returncode == 0, r.stderr
    return repo


def module_env(repo: Path, **extra: str) -> dict:
    """Environment for running the project's modules from a copy at `repo`."""
    return {**os.environ, "PYTHONPATH": str(repo), **extra}


def run_module(repo: Path, module: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m module args` in repo (a project copy), output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=repo, capture_output=True, text=True,
                          env=module_env(repo, **env))


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
