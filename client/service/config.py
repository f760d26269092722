"""Site configuration of the restoration daemon: one TOML file per site, validated once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from festa.client.restoration.committed_weights import default_model_dir
from festa.shared.config import ConfigError, FestaModel, load_toml

SPEC_PATTERN = re.compile(r"^[a-z]+(:[A-Za-z0-9_.=,:-]+)?(\+[a-z]+(:[A-Za-z0-9_.=,:-]+)?)*$")
"""Shape of a degradation SPEC (`noise:poisson:dose=2000,read=0.01+blur:gauss:sigma=2`);
the restoration engine checks its meaning when the daemon starts."""


class FoldersConfig(FestaModel):
    """Where images arrive, where results and rejects go, and where the journal lives."""

    incoming: Path
    restored: Path
    quarantine: Path
    state: Path


class RestoreConfig(FestaModel):
    """Which degradation this site's images carry and how to undo it."""

    degradation: str = Field("auto", description="a degradation SPEC, or `auto` to estimate it")
    method: str = Field(
        "dps", description="dps, cddb, cddb-deep, blinddps, gctm, or auto (with degradation auto)"
    )
    model_dir: Path = Field(
        default_factory=lambda: default_model_dir(real_data=True),
        description="restoration weights; default: the committed cxr64 (real radiographs)",
    )
    nfe: int | None = Field(None, ge=1, le=10000, description="network evaluations per image")
    fit: float = Field(
        0.01,
        ge=0,
        description="final pull of each result towards its scan, which keeps small findings "
        "in the training images, noise-only degradations included (0: off)",
    )
    batch_size: int = Field(4, ge=1, le=1024)
    device: str = "cpu"
    seed: int = 0
    image_size: int | None = Field(
        None, ge=8, le=4096, description="restore at this side length; default: the prior's"
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="a job that was in flight this many times when the daemon died is quarantined",
    )

    @field_validator("degradation")
    @classmethod
    def _spec_shape(cls, value: str) -> str:
        value = value.strip()
        if value != "auto" and not SPEC_PATTERN.match(value):
            raise ValueError(
                f"{value!r} is neither `auto` nor a SPEC like "
                "`noise:poisson:dose=2000,read=0.01+blur:gauss:sigma=2`"
            )
        return value

    @model_validator(mode="after")
    def _auto_method_needs_auto_degradation(self) -> RestoreConfig:
        if self.method == "auto" and self.degradation != "auto":
            raise ValueError("method = 'auto' needs degradation = 'auto'")
        if self.method in ("cddb", "cddb-deep", "gctm") and self.degradation == "auto":
            raise ValueError(
                f"method = {self.method!r} needs a fixed degradation SPEC matching one of its "
                "trained bridges (gctm: distilled models), not 'auto'"
            )
        return self


class WatchConfig(FestaModel):
    """How the incoming folder is polled."""

    enabled: bool = True
    poll_seconds: float = Field(1.0, gt=0, le=3600)
    settle_seconds: float = Field(
        2.0, ge=0, description="a file is taken only after it has been unchanged this long"
    )
    max_file_mb: float = Field(
        512.0, gt=0, description="larger incoming files are quarantined unread (reason only)"
    )


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Hosts the API may be bound to without a key. Anything else, other loopback aliases such as
127.0.0.2 included, needs `http.api_key`."""


def is_local_default(host: str) -> bool:
    """True for 127.0.0.1, localhost and ::1: the only binds that need no API key."""
    return host.strip().lower() in LOCAL_HOSTS


class HttpConfig(FestaModel):
    """The local HTTP API. Bound anywhere but 127.0.0.1/localhost/::1, an API key is mandatory."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    api_key: str | None = Field(None, min_length=16)
    max_upload_mb: float = Field(256.0, gt=0)

    @model_validator(mode="after")
    def _key_beyond_localhost(self) -> HttpConfig:
        if self.enabled and not is_local_default(self.host) and not self.api_key:
            raise ValueError(
                f"api_key is required when host is {self.host!r} (not 127.0.0.1/localhost/::1); "
                "set http.api_key (16+ characters) or bind to 127.0.0.1"
            )
        return self


AE_TITLE_PATTERN = r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}$"
"""A DICOM AE title: 1-16 printable ASCII characters, no backslash, no leading space."""


class DicomConfig(FestaModel):
    """DICOM network ingest: a Storage SCP that PACS and modalities push to with C-STORE.

    Only the calling AE titles in `allowed_calling_aets` may associate; datasets over
    `max_dataset_mb` are refused (status A700) and quarantined by reason only."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    ae_title: str = Field("FESTA", pattern=AE_TITLE_PATTERN)
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="calling AE titles that may send (all others rejected)"
    )
    max_dataset_mb: float = Field(512.0, gt=0)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _valid_titles(cls, titles: list[str]) -> list[str]:
        for title in titles:
            if not re.match(AE_TITLE_PATTERN, title):
                raise ValueError(f"{title!r} is not an AE title (1-16 printable ASCII characters)")
        return titles

    @model_validator(mode="after")
    def _allow_list_when_enabled(self) -> DicomConfig:
        if self.enabled and not self.allowed_calling_aets:
            raise ValueError(
                "allowed_calling_aets is empty: list the AE titles of the PACS/modalities "
                "that may send (every other caller is rejected)"
            )
        return self


class SiteConfig(FestaModel):
    """Everything one site's restoration daemon needs."""

    site_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    folders: FoldersConfig
    restore: RestoreConfig
    watch: WatchConfig = WatchConfig()
    http: HttpConfig = HttpConfig()
    dicom: DicomConfig = DicomConfig()


def load_site_config(path: str | Path, **overrides: Any) -> SiteConfig:
    """Read SITE.toml; relative folder and model paths are taken from the file's directory.

    Raises ConfigError naming the bad key (e.g. `http.api_key`, `restore.degradation`).
    """
    path = Path(path)
    config = load_toml(path, SiteConfig, **overrides)
    base = path.resolve().parent

    def anchored(p: Path) -> Path:
        return (base / p).resolve()  # absolute paths stay as they are (symlinks resolved)

    folders = config.folders.model_copy(
        update={k: anchored(v) for k, v in config.folders.model_dump().items()}
    )
    restore = config.restore.model_copy(update={"model_dir": anchored(config.restore.model_dir)})
    resolved = config.model_copy(update={"folders": folders, "restore": restore})
    named = {
        "incoming": folders.incoming,
        "restored": folders.restored,
        "quarantine": folders.quarantine,
        "state": folders.state,
    }
    seen: dict[Path, str] = {}
    for key, folder in named.items():
        other = seen.get(folder.resolve())
        if other is not None:
            raise ConfigError(f"{path}: folders.{key} is the same folder as folders.{other}")
        seen[folder.resolve()] = key
    return resolved
