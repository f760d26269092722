"""Helpers for the site daemon tests: site folders + TOML, a real daemon subprocess, inputs."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from festa.shared.data.phantoms import phantom_images

REPO_ROOT = Path(__file__).resolve().parents[3]
PHANTOM64 = REPO_ROOT / "client" / "restoration" / "weights" / "phantom64"
API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 32-px DPS prior trained here with the restoration engine's own API (a few steps:
    the daemon's behaviour, not image quality, is under test). The committed 64-px prior costs
    about 0.7 s per step per image on a CI core, too slow for crash tests that need many steps."""
    from festa.client.restoration.training import TrainConfig, train_prior

    root = tmp_path_factory.mktemp("tiny-prior")
    train_prior("phantoms", 32, root / "prior", TrainConfig(steps=5, batch=4), preset="tiny")
    return root


@pytest.fixture(scope="session")
def image_size(model_dir: Path) -> int:
    from festa.client.service.daemon import model_image_size

    return model_image_size(model_dir)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_site(
    root: Path,
    model_dir: Path,
    *,
    degradation: str = "noise:poisson:dose=2000,read=0.01",
    method: str = "dps",
    nfe: int = 4,
    batch_size: int = 4,
    http: dict[str, object] | None = None,
) -> Path:
    """A site folder tree under `root` and its SITE.toml; returns the TOML path."""
    http = {"enabled": False} if http is None else http
    lines = [
        'site_id = "test-site"',
        "[folders]",
        'incoming = "incoming"',
        'restored = "restored"',
        'quarantine = "quarantine"',
        'state = "state"',
        "[restore]",
        f'degradation = "{degradation}"',
        f'method = "{method}"',
        f'model_dir = "{model_dir}"',
        f"nfe = {nfe}",
        f"batch_size = {batch_size}",
        "seed = 0",
        "[watch]",
        "poll_seconds = 0.2",
        "settle_seconds = 0.0",
        "[http]",
    ]
    for key, value in http.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}")
    toml = root / "site.toml"
    root.mkdir(parents=True, exist_ok=True)
    (root / "incoming").mkdir(exist_ok=True)
    toml.write_text("\n".join(lines).replace("'", '"') + "\n")
    return toml


class Daemon:
    """`python -m festa.client.service.cli serve --site TOML` as a real child process."""

    def __init__(self, toml: Path) -> None:
        self.toml = toml
        self.root = toml.parent
        self.out = self.root / "daemon.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            # keep the caller's path first: it decides which checkout `festa` resolves to
            "PYTHONPATH": os.pathsep.join(
                p for p in (os.environ.get("PYTHONPATH"), str(REPO_ROOT)) if p
            ),
        }
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "festa.client.service.cli",
                    "serve",
                    "--site",
                    str(self.toml),
                ],
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
        """Poll `check` until true; fail with the daemon's output if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(
                    f"daemon exited ({self.proc.returncode}) waiting for {what}:\n{self.output()[-4000:]}"
                )
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}:\n{self.output()[-4000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def daemon_factory() -> Iterator[Callable[[Path], Daemon]]:
    started: list[Daemon] = []

    def make(toml: Path) -> Daemon:
        daemon = Daemon(toml)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()


def journal_status(state: Path) -> dict[str, str]:
    """sha256 -> status, read straight from the daemon's journal (read-only)."""
    db = state / "journal.sqlite3"
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT sha256, status FROM jobs").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def good_pngs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """`n` phantom radiographs as 8-bit and 16-bit PNGs (alternating), distinct content."""
    paths = []
    for i, image in enumerate(phantom_images(n, 64, seed=seed)):
        path = folder / f"phantom{seed}_{i}.png"
        if i % 2:
            Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(path)
        else:
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def broken_files(folder: Path, real_dicom: Path) -> dict[str, str]:
    """Write one file per failure mode; returns file name -> expected quarantine kind."""
    import zlib

    expected: dict[str, str] = {}
    (folder / "empty.png").write_bytes(b"")
    expected["empty.png"] = "zero_bytes"
    good = png_bytes(phantom_images(1, 64, seed=7)[0])
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    expected["truncated.png"] = "truncated"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        buf, format="JPEG"
    )
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected["truncated.jpg"] = "truncated"
    (folder / "report.png").write_text("not an image, a text file with a .png name\n")
    expected["report.png"] = "not_an_image"
    ds = pydicom.dcmread(real_dicom)
    del ds.PixelData
    ds.save_as(folder / "nopixels.dcm", enforce_file_format=True)
    expected["nopixels.dcm"] = "no_pixel_data"
    body = zlib.compress(b"\x00" * 4096)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
        )

    ihdr = (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    (folder / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    expected["bomb.png"] = "too_large"
    Image.fromarray(phantom_images(1, 64, seed=8)[0] > 0.5).save(folder / "onebit.png")
    expected["onebit.png"] = "unsupported_depth"
    return expected
