"""A generated corpus of bad inputs (image files, wire tensors, site daemon configs, server and
site deployment files, federation files and configs, daemon and console HTTP calls, session
tokens): every item is refused with a typed reason, and a good request afterwards is still
served. Prints the counts per category."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from festa.client.deploy import SiteSettings
from festa.client.service.config import load_site_config
from festa.client.service.daemon import SiteService
from festa.client.service.http_api import create_app
from festa.server import certs
from festa.server.body_service.tokens import InvalidTokenError, issue_token, verify_token
from festa.server.console.app import LOOPBACK_HOSTS
from festa.server.console.app import create_app as create_console
from festa.server.console.cli import app as console_cli
from festa.server.deploy import ServerSettings
from festa.server.store import RunStore
from festa.shared.config import ConfigError, FederationConfig, load_toml
from festa.shared.data.imageio import ImageReadError, read_image
from festa.shared.data.phantoms import phantom_images
from festa.shared.deploy import load_settings
from festa.shared.federation_file import FederationFileError, load_federation_file
from festa.shared.wire import codec

from . import corpus_configs
from .conftest import API_KEY, png_bytes, write_site

LIMITS = codec.TokenLimits(embed_dim=8, max_tokens=16, max_batch=4, max_bytes=1 << 16)


def _good_png() -> bytes:
    return png_bytes(phantom_images(1, 32, seed=3)[0])


def _dicom_bytes(**changes: object) -> bytes:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def image_corpus() -> Iterator[bytes]:
    """Bad image files: truncations, bit flips, wrong headers, bad DICOM attributes."""
    png = _good_png()
    for cut in (1, 8, 16, 33, len(png) // 4, len(png) // 2, len(png) - 40):
        yield png[:cut]
    for pos in range(8, 33):  # every byte of the IHDR chunk (length, type, fields, CRC)
        broken = bytearray(png)
        broken[pos] ^= 0xFF
        yield bytes(broken)
    rng = np.random.default_rng(0)
    for magic in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"%PDF-1.4"):
        for n in (0, 200, 3000):
            yield magic + rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    for n in (1, 2, 3, 4, 16, 100, 131, 132, 1000, 5000):
        yield rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    yield b"\x00" * 4096
    yield b"name,finding\nA,covid\n" * 10
    dcm = _dicom_bytes()
    for cut in (132, 200, 400, len(dcm) // 2, len(dcm) - 2000):
        yield dcm[:cut]
    for changes in (
        {"BitsAllocated": 32},
        {"BitsAllocated": 12},
        {"BitsStored": 20},
        {"Rows": 20000},
        {"Columns": 0},
        {"Rows": 128},
        {"PhotometricInterpretation": "PALETTE COLOR"},
        {"PhotometricInterpretation": "HSV"},
        {"SamplesPerPixel": 3},
        {"NumberOfFrames": 4},
    ):
        yield _dicom_bytes(**changes)
    side = (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    chunk = b"IHDR" + side
    yield (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )


def wire_corpus() -> Iterator[codec.WireTensor]:
    """Bad wire tensors: dtype, shape, byte count, NaN/Inf, size and token limits."""
    good = codec.encode(torch.ones(2, 4, 8))
    for dtype in ("fp64", "int16", "", "FP32", "float32", "bf8"):
        yield codec.WireTensor(dtype, good.shape, good.data)
    for shape in (
        (2, 4),
        (2, 4, 8, 1),
        (2, 4, 7),
        (2, 4, 9),
        (0, 4, 8),
        (5, 4, 8),
        (2, 0, 8),
        (2, 17, 8),
        (2, -4, 8),
        (-2, -4, 8),
        (),
        (1,),
    ):
        yield codec.WireTensor("fp32", shape, good.data)
    for dim in (1, 2, 3, 4, 5, 6, 7, 9, 10, 16):  # the body's D is 8
        yield codec.WireTensor("fp32", (2, 4, dim), b"\x00" * (2 * 4 * dim * 4))
    for cut in (0, 1, 3, 4, len(good.data) - 1):
        yield codec.WireTensor("fp32", good.shape, good.data[:cut])
    yield codec.WireTensor("fp32", good.shape, good.data + b"\x00")
    yield codec.WireTensor("fp32", good.shape, good.data, b"\x00" * 8)
    for bad in (float("nan"), float("inf"), float("-inf")):
        for dtype, fmt in (("fp32", "<f4"), ("fp16", "<f2")):
            values = np.ones(64, dtype=fmt)
            values[5] = bad
            yield codec.WireTensor(dtype, (2, 4, 8), values.tobytes())
        words = (np.array([bad] * 64, dtype="<f4").view("<u4") >> 16).astype("<u2")
        yield codec.WireTensor("bf16", (2, 4, 8), words.tobytes())
    q = codec.encode(torch.ones(2, 4, 8), "int8")
    for scales in (b"", q.scales[:-4], q.scales + b"\x00" * 4):
        yield codec.WireTensor("int8", q.shape, q.data, scales)
    nan_scales = np.full(8, np.nan, dtype="<f4").tobytes()
    yield codec.WireTensor("int8", q.shape, q.data, nan_scales)
    yield codec.WireTensor("fp32", (4, 16, 8), b"\x00" * (1 << 17))  # over max_bytes


def config_corpus(base: str) -> Iterator[str]:
    """Bad site TOML files derived from a good one."""
    yield base + "\n[[[broken"
    yield base.replace("[folders]", "[folders")
    yield base + "\nunknown_key = 1\n"
    yield base.replace('site_id = "test-site"', "")
    for old, new in (
        ("batch_size = 4", "batch_size = 0"),
        ("batch_size = 4", 'batch_size = "four"'),
        ("batch_size = 4", "batch_size = 100000"),
        ("nfe = 2", "nfe = -1"),
        ("nfe = 2", "nfe = 1e9"),
        ("poll_seconds = 0.2", "poll_seconds = 0"),
        ("poll_seconds = 0.2", "poll_seconds = -1"),
        ('site_id = "test-site"', 'site_id = "../etc"'),
        ('site_id = "test-site"', 'site_id = ""'),
        ('site_id = "test-site"', "site_id = 5"),
        ('restored = "restored"', 'restored = "incoming"'),
        ('method = "dps"', 'method = "auto"'),
        ('degradation = "noise:poisson:dose=2000,read=0.01"', 'degradation = "rm -rf /"'),
        ('degradation = "noise:poisson:dose=2000,read=0.01"', "degradation = 3"),
    ):
        assert old in base, old
        yield base.replace(old, new)
    for http in (
        '[http]\nhost = "0.0.0.0"',
        '[http]\nhost = "10.0.0.1"\napi_key = "short"',
        "[http]\nport = 70000",
        "[http]\nport = -1",
        "[http]\nmax_upload_mb = 0",
    ):
        yield base.replace("[http]\nenabled = false", http)
    for dicom in (
        "[dicom]\nenabled = true",
        '[dicom]\nenabled = true\nallowed_calling_aets = ["A\\\\B"]',
        '[dicom]\nenabled = true\nallowed_calling_aets = ["WAY_TOO_LONG_AE_TITLE"]',
        '[dicom]\nae_title = ""',
        "[dicom]\nmax_dataset_mb = -5",
        "[dicom]\nport = 99999",
    ):
        yield base + "\n" + dicom + "\n"


def token_corpus(secret: bytes) -> Iterator[str]:
    """Bad session tokens: malformed, tampered, foreign-signed, expired."""
    good = issue_token(secret, "run", 1, "node", "classification", ttl_s=60)
    payload, signature = good.split(".")
    yield from ("", ".", "..", "a", "a.b.c", payload, f"{payload}.", f".{signature}")
    yield f"{payload}.{signature[:-2]}"
    yield f"{payload[:-2]}.{signature}"
    yield f"{payload}x.{signature}"
    yield f"{signature}.{payload}"
    yield issue_token(b"another secret", "run", 1, "node", "classification", ttl_s=60)
    yield issue_token(secret, "run", 1, "node", "classification", ttl_s=1, now=0.0)
    yield good.replace(".", "!")
    yield "é.ü"
    for i in range(0, len(payload), max(1, len(payload) // 10)):
        flipped = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1 :]
        yield f"{flipped}.{signature}"
    for i in range(0, len(signature), max(1, len(signature) // 10)):
        flipped = signature[:i] + ("A" if signature[i] != "A" else "B") + signature[i + 1 :]
        yield f"{payload}.{flipped}"


ADMIN = "console-admin-token-0123456789"


def console_corpus(run_id: int, ended_id: int) -> Iterator[tuple[str, str, dict, object]]:
    """Bad calls to the console's JSON API: (method, url, headers, JSON body or raw bytes)."""
    admin = {"X-Festa-Admin-Token": ADMIN}
    for bad_id in ("0", "-1", "abc", "1.5", "1e3", "99999999999999999999", "9223372036854775808"):
        for leaf in ("", "/rounds", "/events", "/snapshot"):
            yield "get", f"/api/runs/{bad_id}{leaf}", {}, None
    yield "get", "/api/runs/424242", {}, None
    yield "get", "/api/runs/424242/clients", {}, None
    for query in (
        "events?after_id=-1",
        "events?after_id=99999999999999999999",
        "events?after_id=x",
        "events?limit=0",
        "events?limit=-5",
        "events?limit=5001",
        "client_rounds?round=0",
        "client_rounds?round=-3",
        "client_rounds?round=99999999999999999999",
        "client_rounds?round=one",
        "restoration?latest=maybe",
    ):
        yield "get", f"/api/runs/{run_id}/{query}", {}, None
    yield "get", "/api/runs", {"host": "evil.example"}, None  # DNS rebinding
    yield "get", "/api/nowhere", {}, None
    yield "delete", f"/api/runs/{run_id}", {}, None
    yield "put", f"/api/runs/{run_id}/stop", admin, None
    for headers in (
        {},
        {"X-Festa-Admin-Token": ""},
        {"X-Festa-Admin-Token": "wrong-token"},
        {"X-Festa-Admin-Token": ADMIN[:-1]},
        {"X-Festa-Admin-Token": ADMIN + "x"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": ADMIN},
    ):
        yield "post", f"/api/runs/{run_id}/stop", headers, None
        yield "get", f"/api/runs/{run_id}/actions", headers, None
    exclude = f"/api/runs/{run_id}/exclude"
    for body in (
        {"site_id": "no-such-site"},
        {"site_id": ""},
        {"site_id": "   "},
        {"site_id": "x" * 121},
        {"site_id": 5},
        {"site_id": None},
        {"site_id": ["site-a"]},
        {"site_id": "site-a", "extra": 1},
        {},
        [],
        "site-a",
    ):
        yield "post", exclude, admin, body
    for raw in (b"{not json", b"\xff\xfe", b"", b'{"site_id": "site-a"', b"null"):
        yield "post", exclude, {**admin, "content-type": "application/json"}, raw
    yield "post", exclude, {"X-Festa-Admin-Token": "wrong-token"}, {"site_id": "site-a"}
    yield "post", "/api/runs/424242/stop", admin, None
    yield "post", "/api/runs/424242/exclude", admin, {"site_id": "site-a"}
    yield "post", "/api/runs/99999999999999999999/stop", admin, None
    yield "post", f"/api/runs/{ended_id}/stop", admin, None  # the run has finished
    yield "post", f"/api/runs/{ended_id}/exclude", admin, {"site_id": "site-a"}


def console_cli_corpus(ended_id: int) -> Iterator[list[str]]:
    """Bad `festa console` command lines: run ids that do not exist or cannot, ended runs."""
    for command in ("status", "rounds", "clients", "events", "stop"):
        for run in ("99999999999999999999", "0", "-1", "424242", "x"):
            yield [command, "--run", run]
    yield ["stop", "--run", str(ended_id)]
    yield ["exclude", " ", "--run", str(ended_id)]
    yield ["events", "--limit", "lots"]


def _refused(check: Callable[[], object], errors: tuple[type[BaseException], ...]) -> str:
    try:
        check()
    except errors as exc:
        assert str(exc), f"{type(exc).__name__} without a reason"
        return type(exc).__name__
    pytest.fail("a bad item was accepted")


def test_bad_input_corpus_is_refused_and_services_keep_serving(
    tmp_path: Path, model_dir: Path
) -> None:
    counts: dict[str, int] = {}

    for i, data in enumerate(image_corpus()):
        path = tmp_path / "images" / f"bad{i}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        _refused(lambda path=path: read_image(path), (ImageReadError,))
        counts["image files"] = counts.get("image files", 0) + 1

    for wire in wire_corpus():
        _refused(lambda wire=wire: codec.decode(wire, LIMITS), (codec.WireFormatError,))
        counts["wire tensors"] = counts.get("wire tensors", 0) + 1
    assert codec.decode(codec.encode(torch.ones(2, 4, 8)), LIMITS).shape == (2, 4, 8)

    toml = write_site(tmp_path / "site", model_dir, nfe=2)
    base = toml.read_text()
    for i, text in enumerate(config_corpus(base)):
        bad = tmp_path / "site" / f"bad{i}.toml"
        bad.write_text(text)
        _refused(lambda bad=bad: load_site_config(bad), (ConfigError,))
        counts["site configs"] = counts.get("site configs", 0) + 1

    secret = b"corpus-secret-0123456789"
    for token in token_corpus(secret):
        _refused(lambda token=token: verify_token(secret, token), (InvalidTokenError,))
        counts["session tokens"] = counts.get("session tokens", 0) + 1
    good_token = issue_token(secret, "run", 2, "node", "segmentation", ttl_s=60)
    assert verify_token(secret, good_token).round == 2

    keyed = toml.with_name("keyed.toml")
    keyed.write_text(base.replace("[http]\nenabled = false", f'[http]\napi_key = "{API_KEY}"'))
    service = SiteService(load_site_config(keyed))
    client = TestClient(create_app(service))
    key = {"X-API-Key": API_KEY}
    calls = [("get", "/health", {}), ("get", "/metrics", {"X-API-Key": "wrong-key-0123456789"})]
    calls += [
        ("get", f"/jobs/{job}", key)
        for job in (
            "0" * 64,
            "x",
            "..%2F..%2Fetc",
            "a" * 500,
            "%00",
            "' OR 1=1 --",
            "-1",
            "\u00e9" * 8,
        )
    ]
    calls += [("get", f"/jobs/{'f' * 64}/{leaf}", key) for leaf in ("image", "provenance")]
    calls += [("post", "/jobs?filename=a.png", {}), ("delete", "/jobs", key)]
    calls += [("put", "/quarantine", key), ("get", "/nowhere", key)]
    for method, url, headers in calls:
        response = client.request(method, url, headers=headers)
        assert 400 <= response.status_code < 500, (method, url, response.status_code)
        assert response.json().get("detail"), (method, url)
        counts["daemon HTTP calls"] = counts.get("daemon HTTP calls", 0) + 1
    upload = client.post("/jobs?filename=good.png", content=_good_png(), headers=key)
    assert upload.status_code == 202
    while service.run_once():
        pass
    job = client.get(f"/jobs/{upload.json()['job_id']}", headers=key).json()
    assert job["status"] == "restored"

    for category, good, corpus, load, errors in _toml_corpora(tmp_path / "toml"):
        folder = tmp_path / "toml" / category.replace(" ", "-")
        folder.mkdir(parents=True)
        (folder / "good.toml").write_text(good)
        load(folder / "good.toml")  # the file every item is derived from is accepted
        for i, text in enumerate(corpus):
            bad = folder / f"bad{i}.toml"
            bad.write_text(text)
            _refused(lambda bad=bad, load=load: load(bad), errors)
            counts[category] = counts.get(category, 0) + 1

    with RunStore(tmp_path / "console.db") as store:
        ended = store.create_run("ended", {}, 1)
        store.mark_client(ended, "site-a", True, node_id=1, task="classification")
        store.finish_run(ended)
        run_id = store.create_run("running", {}, 3)
        store.mark_client(run_id, "site-a", True, node_id=1, task="classification")
        store.start_round(run_id, 1, "warmup")
        console = TestClient(
            create_console(store, ADMIN, LOOPBACK_HOSTS),
            base_url="http://127.0.0.1",
            raise_server_exceptions=False,
        )
        for method, url, headers, body in console_corpus(run_id, ended):
            raw = body if isinstance(body, bytes) else None
            json_body = None if raw is not None else body
            response = console.request(method, url, headers=headers, json=json_body, content=raw)
            assert 400 <= response.status_code < 500, (method, url, body, response.status_code)
            assert _reason(response), (method, url, body)
            counts["console HTTP calls"] = counts.get("console HTTP calls", 0) + 1
        assert console.get(f"/api/runs/{run_id}/snapshot").status_code == 200
        admin = {"X-Festa-Admin-Token": ADMIN}
        excluded = console.post(
            f"/api/runs/{run_id}/exclude", json={"site_id": "site-a"}, headers=admin
        )
        assert excluded.status_code == 200
        assert [a["kind"] for a in store.pending_actions(run_id)] == ["exclude_site"]
        assert store.pending_actions(ended) == []

    cli = CliRunner()
    db = str(tmp_path / "console.db")
    for argv in console_cli_corpus(ended):
        done = cli.invoke(console_cli, [*argv, "--store", db])
        # refused with a message and an exit status, never an exception escaping the command
        assert done.exit_code != 0 and isinstance(done.exception, SystemExit), (argv, done)
        assert done.stderr.strip(), argv
        counts["console CLI calls"] = counts.get("console CLI calls", 0) + 1
    assert cli.invoke(console_cli, ["status", "--store", db]).exit_code == 0

    total = sum(counts.values())
    print(f"bad-input corpus: {total} items refused: {counts}")
    assert total >= 200


def _reason(response) -> str:
    """The refusal's reason: FastAPI's `detail` (text or validation errors) or a plain-text body."""
    try:
        return str(response.json().get("detail") or "")
    except ValueError:
        return response.text.strip()


def _toml_corpora(root: Path) -> list[tuple[str, str, Iterator[str], Callable, tuple]]:
    """(category, good file, bad files, loader, expected errors) for every TOML loader."""
    cdir = root / "certs"
    certs.init_ca(cdir)
    for name in ("superlink", "body"):
        certs.issue_server_cert(cdir, name)
    certs.node_key(cdir, "site-a")
    certs.issue_client_cert(cdir, "site-a")
    server = corpus_configs.server_good(root, cdir)
    site = corpus_configs.site_good(root, cdir)
    fed = corpus_configs.FEDERATION_GOOD
    cfg = corpus_configs.CONFIG_GOOD
    return [
        (
            "server deployment files",
            server,
            corpus_configs.server_corpus(server, root, cdir),
            lambda p: load_settings(p, ServerSettings, insecure_section="server"),
            (ConfigError,),
        ),
        (
            "site deployment files",
            site,
            corpus_configs.site_corpus(site, root, cdir),
            lambda p: load_settings(p, SiteSettings, insecure_section="superlink"),
            (ConfigError,),
        ),
        (
            "federation files",
            fed,
            corpus_configs.federation_corpus(fed),
            load_federation_file,
            (FederationFileError,),
        ),
        (
            "federation configs",
            cfg,
            corpus_configs.config_corpus(cfg),
            lambda p: load_toml(p, FederationConfig),
            (ConfigError,),
        ),
    ]
