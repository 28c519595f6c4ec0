"""Colab support: what the first cell of every notebook does after it has installed the kit there.

The first cell (the same few lines in every notebook, since Colab opens one notebook at a time) installs the kit
from ``KIT_SOURCE`` with pip, which keeps Colab's own torch (the kit asks only for ``torch>=2.3``), then calls
:func:`report`. Anywhere else, that cell does nothing. The kit has no public home yet, so ``KIT_SOURCE`` defaults to
what you uploaded: the kit's folder at :data:`DEFAULT_KIT_SOURCE`, else the newest ``/content/layerfreeze-*.whl``
(by version, then upload time; a re-upload that Colab renamed ``... (1).whl`` is installed from a copy under its
built name).
It may also name another folder, a wheel or a git URL. When it cannot be installed, the cell prints one paragraph on
how to set it and stops (no traceback). The cell runs before the kit is installed, so it cannot import this module:
``tests/test_colab.py`` keeps the two in step.
"""

from __future__ import annotations

import os
import sys

DEFAULT_KIT_SOURCE = "/content/layerfreeze"
UPLOADED_WHEELS = "/content/layerfreeze-*.whl"
FORCE_ENV_VAR = "LAYERFREEZE_FORCE_COLAB"


def on_colab() -> bool:
    """True inside Google Colab (or when ``LAYERFREEZE_FORCE_COLAB=1``, for tests)."""
    return "google.colab" in sys.modules or os.environ.get(FORCE_ENV_VAR) == "1"


def report() -> str:
    """Say where the notebook runs, and how to get a GPU when there is none."""
    import torch

    if torch.cuda.is_available():
        message = f"GPU: {torch.cuda.get_device_name(0)} (torch {torch.__version__}); profile 'auto' runs 'full'."
    else:
        message = (f"No GPU (torch {torch.__version__}): profile 'auto' runs the shorter 'cpu' profile. For a GPU, "
                   "choose Runtime > Change runtime type > T4 GPU, then run this notebook again from the top.")
    print(message)
    return message
