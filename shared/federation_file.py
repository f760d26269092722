"""The federation file: which sites take part, what data each holds and which task it trains.

A TOML file with one `[[site]]` table per site. `id`, `task` and `data` are the keys a deployed
site declares in its `[site]` table (`deploy/site-*.toml`); a simulated site may also narrow a
shared folder down to its own rows:

    [[site]]
    id = "kermany-1"
    task = "classification"
    data = "/data/cxr-open"          # a folder with manifest.csv, or "phantoms"
    sites = ["kermany"]              # keep rows whose manifest `site` is one of these
    patient-shard = "1/5"            # patients hashed into 5 shards; keep shard 1
    classes = ["normal", "pneumonia-bacterial", "pneumonia-viral"]   # finding labels kept

Which labels a site really has is checked against its data in `festa.shared.data.site_datasets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from festa.shared.config import ConfigError, read_toml, validate
from festa.shared.deploy import DeployModel

SITE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class FederationFileError(ConfigError):
    """A federation file is invalid, or a site's data cannot serve its task; names the site."""


class SiteDeclaration(DeployModel):
    """One site: its id, its task and its data (a deployed site's `[site]` keys, plus filters)."""

    id: str = Field(pattern=SITE_ID_PATTERN)
    task: Literal["classification", "segmentation", "detection"]
    data: str = Field(description="a folder with manifest.csv, or 'phantoms'")
    sites: list[str] | None = Field(None, description="manifest `site` values to keep")
    patient_shard: str = Field("", description="'K/N': keep shard K of N patient shards")
    classes: list[str] | None = Field(
        None, description="finding labels kept for classification; others count as unlabelled"
    )
    phantoms: int = Field(300, ge=1, description="training phantoms when data = 'phantoms'")

    @field_validator("patient_shard")
    @classmethod
    def _shard(cls, v: str) -> str:
        if v:
            shard_of(v)
        return v

    @property
    def shard(self) -> tuple[int, int] | None:
        """(K, N) of `patient-shard`, or None when the site keeps every patient."""
        return shard_of(self.patient_shard) if self.patient_shard else None


def shard_of(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N; ValueError otherwise."""
    k, sep, n = text.partition("/")
    try:
        shard, count = int(k), int(n)
    except ValueError:
        raise ValueError(f"{text!r} is not 'K/N' (e.g. '1/4')") from None
    if not sep or not 1 <= shard <= count:
        raise ValueError(f"{text!r}: need 1 <= K <= N in 'K/N'")
    return shard, count


class FederationFile(DeployModel):
    """Every site of a federation, in client order."""

    site: list[SiteDeclaration] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> FederationFile:
        seen: set[str] = set()
        for s in self.site:
            if s.id in seen:
                raise ValueError(f"site id {s.id!r} appears twice")
            seen.add(s.id)
        return self

    @property
    def tasks(self) -> list[str]:
        """The tasks the sites train, in order of first appearance."""
        return list(dict.fromkeys(s.task for s in self.site))


def load_federation_file(path: str | Path, data: str | None = None) -> FederationFile:
    """Read and validate a federation file; relative `data` folders are taken from the file's
    own folder, and `data` (when given) replaces every site's folder (phantom sites stay).
    Raises FederationFileError naming the bad key."""
    path = Path(path)
    raw = read_toml(path, FederationFileError, "federation file")
    try:
        fed = validate(FederationFile, raw, source=str(path))
    except ConfigError as exc:
        raise FederationFileError(str(exc)) from exc
    sites = []
    for s in fed.site:
        if s.data != "phantoms":
            folder = Path(data).resolve() if data else (path.parent / s.data).resolve()
            if not (folder / "manifest.csv").is_file():
                raise FederationFileError(f"{path}: site {s.id}: data: no manifest.csv in {folder}")
            s = s.model_copy(update={"data": str(folder)})
        sites.append(s)
    return fed.model_copy(update={"site": sites})
