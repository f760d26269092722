"""Process-wide settings, applied once by each entry point (the `festa` command, the Flower apps).

Hugging Face libraries read ``HF_HUB_OFFLINE`` when ``huggingface_hub`` is first imported (timm
and diffusers import it), so entry points call :func:`configure_process` before those imports;
child processes (SuperNodes, ClientApps, Ray workers, the restoration daemon) inherit it.
"""

from __future__ import annotations

import os


def configure_process(threads: int | None = None) -> None:
    """Never reach for a model hub; with ``threads``, run torch's CPU kernels on that many threads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
