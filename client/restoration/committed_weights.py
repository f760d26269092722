"""The restoration weights committed with festa, and which one a data source gets by default.

- ``weights/cxr64``: trained on real radiographs (the cxr-open train split, 64 px). The default
  for real data: image files, DICOM, manifest folders, the site daemon.
- ``weights/phantom64``: trained on festa's procedural phantoms (64 px). The default for
  phantom simulations, whose images it matches.

Light on purpose (no torch import), so configuration code can name the defaults.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"
PHANTOM_WEIGHTS = WEIGHTS_ROOT / "phantom64"
CXR_WEIGHTS = WEIGHTS_ROOT / "cxr64"


def default_model_dir(real_data: bool) -> Path:
    """cxr64 for real radiographs, phantom64 for festa's phantoms."""
    return CXR_WEIGHTS if real_data else PHANTOM_WEIGHTS
