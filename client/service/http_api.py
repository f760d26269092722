"""The daemon's local HTTP API (FastAPI; OpenAPI docs at /docs).

Uploads are the raw request body (`POST /jobs?filename=x.dcm`), so no multipart parser is
needed. When an API key is configured every route but the docs requires `X-API-Key`.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse

from festa.client.service.daemon import SiteService

API_KEY_HEADER = "X-API-Key"


def create_app(service: SiteService) -> FastAPI:
    """The HTTP face of one SiteService."""
    http = service.config.http
    app = FastAPI(
        title=f"festa restoration service ({service.config.site_id})",
        description="Submit radiographs for restoration, follow jobs, fetch results.",
        version="1",
    )

    def require_key(request: Request) -> None:
        if not http.api_key:
            return
        given = request.headers.get(API_KEY_HEADER, "")
        if not hmac.compare_digest(given.encode(), http.api_key.encode()):
            raise HTTPException(status_code=401, detail=f"missing or wrong {API_KEY_HEADER}")

    guarded = [Depends(require_key)]
    max_bytes = int(http.max_upload_mb * 1024 * 1024)

    def job_or_404(job_id: str):
        job = service.journal.get(job_id.lower())
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return job

    @app.post("/jobs", dependencies=guarded, status_code=202, summary="Submit an image")
    async def submit(
        request: Request, filename: str = Query("upload", max_length=255)
    ) -> dict[str, Any]:
        """Body: the raw file (PNG, JPEG or DICOM). The job id is the content's sha256; the same
        content submitted again returns the existing job (`duplicate: true`)."""
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > max_bytes:
            raise HTTPException(status_code=413, detail=f"upload larger than {max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(status_code=413, detail=f"upload larger than {max_bytes} bytes")
            chunks.append(chunk)
        job, created = service.submit_bytes(b"".join(chunks), filename, "api")
        return {**job.public(), "duplicate": not created}

    @app.get("/jobs/{job_id}", dependencies=guarded, summary="Job status")
    def status(job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).public()

    @app.get("/jobs/{job_id}/image", dependencies=guarded, summary="Restored 16-bit PNG")
    def image(job_id: str) -> FileResponse:
        job = job_or_404(job_id)
        if job.status != "restored" or not job.result_png:
            raise HTTPException(status_code=409, detail=f"job is {job.status}, not restored")
        return FileResponse(job.result_png, media_type="image/png", filename=f"{job.sha256}.png")

    @app.get("/jobs/{job_id}/provenance", dependencies=guarded, summary="Provenance record")
    def provenance(job_id: str) -> dict[str, Any]:
        job = job_or_404(job_id)
        if job.status != "restored" or not job.result_json:
            raise HTTPException(status_code=409, detail=f"job is {job.status}, not restored")
        return json.loads(Path(job.result_json).read_text())

    @app.get("/quarantine", dependencies=guarded, summary="Quarantined inputs and reasons")
    def quarantine() -> list[dict[str, Any]]:
        return [
            {**job.public(), "quarantine_file": Path(job.quarantine_path or "").name}
            for job in service.journal.jobs("quarantined")
        ]

    @app.get("/health", dependencies=guarded, summary="Liveness")
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics", dependencies=guarded, summary="Job counts")
    def metrics() -> dict[str, Any]:
        return service.metrics()

    return app
