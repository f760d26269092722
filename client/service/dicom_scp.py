"""DICOM network ingest: a Storage SCP (C-STORE) in front of the site service's intake.

PACS and modalities push images with C-STORE rather than copying files. A received dataset is
taken as the bytes the peer sent (never decoded here), wrapped as a Part 10 file and handed to
`SiteService.submit_bytes`, so it goes through the same journal, restoration and quarantine as a
file dropped into the incoming folder: a malformed dataset is accepted and then quarantined with
its reason. Associations from calling AE titles outside `dicom.allowed_calling_aets` are
rejected; a dataset over `dicom.max_dataset_mb` is refused with status A700 and quarantined by
reason only. Datasets are received in chunks to a temporary file (pynetdicom's
`STORE_RECV_CHUNKED_DATASET`), so a large one never sits whole in memory.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification

from festa.client.service.config import DicomConfig

if TYPE_CHECKING:
    from pynetdicom.events import Event
    from pynetdicom.server import ThreadedAssociationServer

    from festa.client.service.daemon import SiteService

log = logging.getLogger("festa.site")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
"""C-STORE "Refused: out of resources": too large, or the service could not keep the dataset."""


class DicomReceiver:
    """One site's Storage SCP; `start()` serves in background threads until `stop()`."""

    def __init__(self, service: SiteService, config: DicomConfig) -> None:
        self.service = service
        self.config = config
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (useful when the configuration asked for port 0)."""
        if self._server is None:
            raise RuntimeError("the DICOM receiver is not running")
        return int(self._server.server_address[1])

    def start(self) -> DicomReceiver:
        _config.STORE_RECV_CHUNKED_DATASET = True  # datasets stream to a temporary file
        ae = AE(ae_title=self.config.ae_title)
        ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            (self.config.host, self.config.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        log.info(
            "DICOM receiver %s on %s:%d, calling AE titles allowed: %s",
            self.config.ae_title,
            self.config.host,
            self.port,
            ", ".join(self.config.allowed_calling_aets),
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: Event) -> int:
        """Queue one received dataset; its outcome is decided by the worker like a file's."""
        calling = str(event.assoc.requestor.ae_title).strip()
        uid = str(event.request.AffectedSOPInstanceUID or "").strip() or "received"
        name, origin = f"{uid}.dcm", f"dicom:{calling}"
        path = event.dataset_path
        try:
            size = path.stat().st_size
            if size > self.config.max_dataset_mb * 1024 * 1024:
                digest = hashlib.sha256()
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                limit = self.config.max_dataset_mb
                self.service.refuse_unread(
                    digest.hexdigest(),
                    name,
                    origin,
                    f"dataset of {size / 2**20:.1f} MiB exceeds dicom.max_dataset_mb = {limit:g}",
                )
                return STATUS_OUT_OF_RESOURCES
            self.service.submit_bytes(path.read_bytes(), name, origin)
        except OSError as exc:  # the service cannot keep it: the sender must retry later
            log.error("cannot keep the dataset %s from %s: %s", uid, calling, exc)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS
