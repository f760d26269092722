"""The site restoration service: intake, batching, restoration, outputs, quarantine, recovery.

Life of an input: its bytes are hashed (sha256 = job id) and snapshotted into
`state/blobs/<sha256>` before the journal row is committed, so later changes to the original
cannot alter what is restored, and the original is only ever read. The worker claims up to
`batch_size` pending jobs, validates and decodes each (bad ones go to quarantine), estimates the
degradation when `auto`, groups by (method, SPEC) and calls the restoration engine once per group.

Crash safety: each output is written to a temporary file and renamed; the provenance JSON is
written last and is the commit point. At start-up, jobs the journal still shows as `running`
were in flight when the daemon died: those whose provenance (or quarantine reason) is already on
disk are settled from it without redoing work; the rest are queued again, and a job that was in
flight `max_attempts` times is quarantined instead of crashing the daemon forever.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from festa.client.service.auto import estimate
from festa.client.service.config import SiteConfig
from festa.client.service.journal import Job, Journal
from festa.client.service.storage import (
    atomic_write_bytes,
    atomic_write_json,
    png16_bytes,
    remove_partials,
    sha256_bytes,
    sha256_file,
)
from festa.shared.config import ConfigError
from festa.shared.data.imageio import ImageReadError, input_format, read_dicom_meta, read_image

log = logging.getLogger("festa.site")

PROVENANCE_KEYS = ("method", "degradation", "seed", "nfe", "residual", "seconds")
"""Keys the restoration engine's provenance must carry for a record to count as complete."""


class RestorerLike(Protocol):
    """What the service needs of `festa.client.restoration.restorer.Restorer`."""

    def parse(self, degradation: str) -> Any: ...

    def restore(self, images: np.ndarray, degradation: str, seed: int = 0) -> list[Any]: ...


RestorerFactory = Callable[[str], RestorerLike]


class ServiceError(RuntimeError):
    """The service cannot start (bad model folder, unusable folders)."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def safe_name(name: str) -> str:
    """A file-system-safe base name (no folders, no odd characters), at most 100 characters."""
    base = Path(name.replace("\\", "/")).name or "upload"
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:100].lstrip(".") or "upload"


def model_image_size(model_dir: Path) -> int:
    """Side length the image prior (or else a CDDB bridge or GCTM model) was trained at."""
    candidates = [model_dir / "prior" / "unet" / "config.json"]
    candidates += sorted(model_dir.glob("bridges/*/unet/config.json"))
    candidates += sorted(model_dir.glob("gctm/*/unet/config.json"))
    for config in candidates:
        try:
            size = json.loads(config.read_text()).get("sample_size")
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(size, list) and size:
            size = size[0]
        if isinstance(size, int):
            return size
    raise ConfigError(
        f"restore.model_dir {model_dir}: no prior/unet/config.json or bridge with sample_size; "
        "set restore.image_size"
    )


def default_restorer_factory(config: SiteConfig) -> RestorerFactory:
    """Build the restoration engine's Restorer once per method (imported lazily: torch)."""
    from festa.client.restoration.restorer import Restorer

    cache: dict[str, RestorerLike] = {}
    rc = config.restore

    def get(method: str) -> RestorerLike:
        if method not in cache:
            cache[method] = Restorer(method, rc.model_dir, nfe=rc.nfe, device=rc.device, fit=rc.fit)
        return cache[method]

    return get


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape == (size, size):
        return image
    from skimage.transform import resize

    return resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype(
        np.float32
    )


class SiteService:
    """One site's restoration service; thread-safe for one worker plus API threads."""

    def __init__(self, config: SiteConfig, restorer_factory: RestorerFactory | None = None):
        self.config = config
        folders = config.folders
        for folder in (folders.incoming, folders.restored, folders.quarantine, folders.state):
            folder.mkdir(parents=True, exist_ok=True)
        self.blobs = folders.state / "blobs"
        self.blobs.mkdir(exist_ok=True)
        self.journal = Journal(folders.state)
        self.image_size = config.restore.image_size or model_image_size(config.restore.model_dir)
        self._factory = restorer_factory
        self.started_at = time.time()
        self.last_loop_at: float | None = None
        self.batches_done = 0
        self.worker_error: str | None = None
        self.worker_running = False

    # ---- intake -------------------------------------------------------------------------------

    def submit_bytes(self, data: bytes, source_name: str, origin: str) -> tuple[Job, bool]:
        """Queue one input (bytes) unless its content is known; returns (job, created)."""
        sha = sha256_bytes(data)
        name = safe_name(source_name)
        blob = self.blobs / sha
        if self.journal.get(sha) is None and not blob.exists():
            atomic_write_bytes(blob, data)
        job, created = self.journal.submit(sha, name, origin, blob)
        log.info(
            "%s %s from %s as %s", "queued" if created else "duplicate of", sha[:12], origin, name
        )
        return job, created

    def scan_incoming(self) -> int:
        """Take in every settled, not yet seen file under the incoming folder; returns how many."""
        incoming = self.config.folders.incoming
        settle = self.config.watch.settle_seconds
        taken = 0
        now = time.time()
        for path in sorted(incoming.rglob("*")):
            rel = path.relative_to(incoming)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            if now - stat.st_mtime < settle:
                continue  # still being written (or just written): next scan
            key = str(rel)
            if self.journal.seen_file(key, stat.st_size, stat.st_mtime_ns):
                continue
            try:
                if stat.st_size > self.config.watch.max_file_mb * 1024 * 1024:
                    job = self._refuse_oversized(path, stat.st_size)
                else:
                    job, _ = self.submit_bytes(path.read_bytes(), path.name, "folder")
            except OSError as exc:
                log.warning("cannot read incoming file %s: %s", key, exc.strerror)
                continue
            self.journal.mark_seen(key, stat.st_size, stat.st_mtime_ns, job.sha256)
            taken += 1
        return taken

    def _refuse_oversized(self, path: Path, size: int) -> Job:
        """Quarantine a file over `watch.max_file_mb` by reason only (no copy is made)."""
        limit = self.config.watch.max_file_mb
        return self.refuse_unread(
            sha256_file(path),
            path.name,
            "folder",
            f"file of {size / 2**20:.1f} MiB exceeds watch.max_file_mb = {limit:g}; not copied",
        )

    def refuse_unread(
        self, sha: str, source_name: str, origin: str, reason: str, kind: str = "too_large"
    ) -> Job:
        """Journal an input that is refused unread, and quarantine it by reason only."""
        job, created = self.journal.submit(sha, safe_name(source_name), origin, self.blobs / sha)
        if created:
            self.quarantine(job, reason, kind)
        return job

    # ---- recovery -----------------------------------------------------------------------------

    def paths_for(self, sha: str) -> tuple[Path, Path]:
        """(restored PNG, provenance JSON) of a job."""
        restored = self.config.folders.restored
        return restored / f"{sha}.png", restored / f"{sha}.json"

    def quarantine_paths(self, job: Job) -> tuple[Path, Path]:
        """(copy of the input, reason JSON) of a quarantined job."""
        stem = f"{job.sha256[:12]}-{job.source_name}"
        folder = self.config.folders.quarantine
        return folder / stem, folder / f"{stem}.reason.json"

    def recover(self) -> None:
        """Settle jobs left `running` by a previous process (see module docstring)."""
        for folder in (self.config.folders.restored, self.config.folders.quarantine, self.blobs):
            remove_partials(folder)
        for job in self.journal.jobs("running"):
            png, prov = self.paths_for(job.sha256)
            copy, reason = self.quarantine_paths(job)
            if png.exists() and _complete_provenance(prov):
                self.journal.finish_restored(job.sha256, png, prov)
                log.info("recovered %s: restored before the restart", job.sha256[:12])
                continue
            if reason.exists():
                record = json.loads(reason.read_text())
                self.journal.finish_quarantined(job.sha256, copy, record["reason"], record["kind"])
                log.info("recovered %s: quarantined before the restart", job.sha256[:12])
                continue
            for uncommitted in (png, prov):  # a result without its provenance never counted
                uncommitted.unlink(missing_ok=True)
            if job.attempts >= self.config.restore.max_attempts:
                self.quarantine(
                    job,
                    f"in flight {job.attempts} times when the service stopped; not retried",
                    "crashed",
                )
            else:
                self.journal.requeue(job.sha256)
                log.info("requeued %s (attempt %d was interrupted)", job.sha256[:12], job.attempts)
        for job in self.journal.jobs("restored") + self.journal.jobs("quarantined"):
            Path(job.blob).unlink(missing_ok=True)

    # ---- outcomes -----------------------------------------------------------------------------

    def quarantine(self, job: Job, reason: str, kind: str) -> None:
        """Copy the input to quarantine with a reason file; the journal row is the last step."""
        copy, reason_path = self.quarantine_paths(job)
        blob = Path(job.blob)
        if blob.exists():
            atomic_write_bytes(copy, blob.read_bytes())
        record = {
            "site": self.config.site_id,
            "input_sha256": job.sha256,
            "source_name": job.source_name,
            "origin": job.origin,
            "reason": reason,
            "kind": kind,
            "attempts": job.attempts,
            "submitted_at": _iso(job.submitted_at),
            "quarantined_at": _now_iso(),
        }
        atomic_write_json(reason_path, record)
        reason_txt = reason_path.with_name(reason_path.name.replace(".reason.json", ".reason.txt"))
        atomic_write_bytes(reason_txt, f"{reason}\n".encode())
        self.journal.finish_quarantined(job.sha256, copy, reason, kind)
        blob.unlink(missing_ok=True)
        log.warning("quarantined %s (%s): %s", job.sha256[:12], job.source_name, reason)

    def _write_restored(self, job: Job, image: np.ndarray, record: dict[str, Any]) -> None:
        png, prov = self.paths_for(job.sha256)
        data = png16_bytes(image)
        atomic_write_bytes(png, data)
        record["restored_shape"] = list(image.shape)
        record["restored_png"] = png.name
        record["restored_png_sha256"] = sha256_bytes(data)
        record["finished_at"] = _now_iso()
        atomic_write_json(prov, record)  # commit point
        self.journal.finish_restored(job.sha256, png, prov)
        Path(job.blob).unlink(missing_ok=True)
        restoration = record["restoration"]
        log.info(
            "restored %s (%s) method=%s spec=%s",
            job.sha256[:12],
            job.source_name,
            restoration.get("method"),
            record["degradation"]["spec"] or "none",
        )

    # ---- the worker ---------------------------------------------------------------------------

    def _prepare(self, job: Job) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Decode and validate one input; quarantines it and returns None when it is bad."""
        blob = Path(job.blob)
        if not blob.exists():
            self.quarantine(job, "the service's copy of the input is missing", "missing")
            return None
        try:
            image = read_image(blob)
            fmt = input_format(blob)
            meta = read_dicom_meta(blob) if fmt == "dicom" else None
        except ImageReadError as exc:
            self.quarantine(job, exc.reason, exc.kind)
            return None
        except Exception as exc:  # a reader bug must cost this input only, never its batch-mates
            log.exception("reading %s failed unexpectedly", job.sha256[:12])
            self.quarantine(job, f"cannot read input: {type(exc).__name__}: {exc}", "invalid")
            return None
        if not np.isfinite(image).all():
            self.quarantine(job, "image contains NaN or infinite values", "invalid")
            return None
        rc = self.config.restore
        if rc.degradation == "auto":
            observation = _resize(image, self.image_size)
            found = estimate(observation)
            method, spec = found.choose(rc.method)
            auto = found.as_dict()
        else:
            # an `sr:F` observation is F times smaller than the restoration it yields
            observation = _resize(image, self.image_size // self._upscale(rc.degradation))
            method, spec, auto = rc.method, rc.degradation, None
        record: dict[str, Any] = {
            "site": self.config.site_id,
            "input_sha256": job.sha256,
            "source_name": job.source_name,
            "origin": job.origin,
            "input": {"format": fmt, "shape": list(image.shape), "dicom": meta},
            "observation_shape": list(observation.shape),
            "resized": list(image.shape) != list(observation.shape),
            "degradation": {
                "mode": "auto" if auto else "fixed",
                "spec": spec,
                "method": method,
                "auto": auto,
            },
            "submitted_at": _iso(job.submitted_at),
            "attempt": job.attempts,
        }
        return observation, record

    def warm_up(self) -> None:
        """Build the restorer(s) now and check a fixed SPEC against the method, so a bad model
        folder or SPEC stops the service at start-up instead of quarantining every image."""
        rc = self.config.restore
        for method in ("dps", "blinddps") if rc.method == "auto" else (rc.method,):
            restorer = self._restorer(method)
            if rc.degradation != "auto":
                restorer.parse(rc.degradation)

    def _upscale(self, spec: str) -> int:
        """How many times larger the restoration is than the observation (F for `sr:F`)."""
        from festa.client.restoration.operators import parse_spec

        side = parse_spec(spec).operator.input_hw((self.image_size, self.image_size))[0]
        return max(1, side // self.image_size)

    def _restorer(self, method: str) -> RestorerLike:
        if self._factory is None:
            self._factory = default_restorer_factory(self.config)
        return self._factory(method)

    def process(self, jobs: list[Job]) -> None:
        """Restore or quarantine every job of a claimed batch; one job's failure (reading,
        estimating or restoring it) never changes another job's outcome or reason."""
        groups: dict[tuple[str, str], list[tuple[Job, np.ndarray, dict[str, Any]]]] = {}
        for job in jobs:
            try:
                prepared = self._prepare(job)
            except Exception as exc:  # e.g. the degradation estimate failed on this image
                log.exception("preparing %s failed", job.sha256[:12])
                self.quarantine(
                    job, f"cannot prepare input: {type(exc).__name__}: {exc}", "invalid"
                )
                continue
            if prepared is not None:
                image, record = prepared
                chosen = record["degradation"]
                groups.setdefault((chosen["method"], chosen["spec"]), []).append(
                    (job, image, record)
                )
        for (method, spec), members in groups.items():
            self._restore_group(method, spec, members)

    def _restore_group(
        self, method: str, spec: str, members: list[tuple[Job, np.ndarray, dict[str, Any]]]
    ) -> None:
        seed = self.config.restore.seed
        if not spec:  # auto found nothing to undo: the input, resized, is the result
            for job, image, record in members:
                record["restoration"] = {
                    "method": "none",
                    "degradation": "",
                    "seed": seed,
                    "nfe": 0,
                    "residual": 0.0,
                    "seconds": 0.0,
                    "note": "auto detected no degradation",
                }
                self._write_restored(job, image, record)
            return
        images = np.stack([image for _, image, _ in members]).astype(np.float32)
        started = time.perf_counter()
        try:
            results = self._restorer(method).restore(images, spec, seed=seed)
        except Exception as exc:  # engine errors (bad SPEC, unsupported input) and failures alike
            log.exception("restoration of %d image(s) with %s failed", len(members), spec)
            if len(members) > 1:  # find the offender: each member alone gets its own outcome
                log.info("restoring the %d members of the failed batch one by one", len(members))
                for member in members:
                    self._restore_group(method, spec, [member])
                return
            job = members[0][0]
            self.quarantine(
                job, f"restoration failed: {type(exc).__name__}: {exc}", "restore_failed"
            )
            return
        log.info("batch of %d with %s in %.1f s", len(members), spec, time.perf_counter() - started)
        for (job, _, record), result in zip(members, results, strict=True):
            try:
                record["restoration"] = dict(result.provenance)
                if getattr(result, "kernel", None) is not None:
                    record["restoration"]["kernel"] = np.asarray(result.kernel).tolist()
                image = np.asarray(result.image, dtype=np.float32)
                if not np.isfinite(image).all():
                    raise ValueError("restored image has NaN or infinite values")
            except (TypeError, ValueError, AttributeError) as exc:  # this result only
                self.quarantine(job, f"unusable restoration: {exc}", "restore_failed")
                continue
            self._write_restored(job, image, record)

    def run_once(self) -> int:
        """One pass: scan the folder, claim a batch, process it. Returns jobs processed."""
        if self.config.watch.enabled:
            self.scan_incoming()
        jobs = self.journal.claim(self.config.restore.batch_size)
        if not jobs:
            return 0
        log.info("batch start: %d job(s) %s", len(jobs), " ".join(j.sha256[:12] for j in jobs))
        try:
            self.process(jobs)
        except Exception as exc:
            log.exception("batch failed unexpectedly")
            self._settle_unfinished(jobs, exc)
        self.batches_done += 1
        return len(jobs)

    def _settle_unfinished(self, jobs: Iterable[Job], exc: Exception) -> None:
        for job in jobs:
            current = self.journal.get(job.sha256)
            if current is None or current.status != "running":
                continue
            if current.attempts >= self.config.restore.max_attempts:
                self.quarantine(current, f"failed {current.attempts} times: {exc}", "failed")
            else:
                self.journal.requeue(job.sha256)

    def run(self, stop: threading.Event) -> None:
        """The worker loop until `stop` is set; errors are logged, never fatal."""
        self.worker_running = True
        try:
            self._loop(stop)
        finally:
            self.worker_running = False

    def _loop(self, stop: threading.Event) -> None:
        self.recover()
        log.info(
            "site %s serving: incoming=%s image_size=%d degradation=%s method=%s",
            self.config.site_id,
            self.config.folders.incoming,
            self.image_size,
            self.config.restore.degradation,
            self.config.restore.method,
        )
        while not stop.is_set():
            self.last_loop_at = time.time()
            try:
                done = self.run_once()
            except Exception as exc:
                self.worker_error = f"{type(exc).__name__}: {exc}"
                log.exception("worker pass failed; continuing")
                done = 0
            if not done:
                stop.wait(self.config.watch.poll_seconds)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.worker_running else "worker stopped",
            "site": self.config.site_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "last_loop_age_s": None
            if self.last_loop_at is None
            else round(time.time() - self.last_loop_at, 1),
            "degradation": self.config.restore.degradation,
            "method": self.config.restore.method,
            "image_size": self.image_size,
            "last_error": self.worker_error,
        }

    def metrics(self) -> dict[str, Any]:
        return {**self.journal.counts(), "batches": self.batches_done}


def _complete_provenance(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "finished_at" in record and all(
        k in record.get("restoration", {}) for k in PROVENANCE_KEYS
    )
