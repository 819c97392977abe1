"""Import the DeCo-Diff reference code (never part of this repository) for the parity scripts.

Get a copy of the public repository farzad-bz/DeCo-Diff (GitHub) anywhere outside this repository and give its
directory with ``--reference`` or ``DECO_DIFF_REFERENCE`` (default ``/tmp/ref``). Its UNet (``models.py``, ``ldm/``)
needs only einops and omegaconf; its training and evaluation scripts also import transformers and pandas at module
level (``pip install transformers pandas``). anomalib, which its evaluation imports for metrics only, is replaced
by an empty module.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_REFERENCE = os.environ.get("DECO_DIFF_REFERENCE", "/tmp/ref")
# The reference's top-level modules, which must not meet other modules of the same names.
_REFERENCE_MODULES = ("models", "ldm", "diffusion", "train_DeCo_Diff", "evaluation_DeCo_Diff", "MVTECDataLoader",
                      "VISADataLoader", "anomalib")


@contextmanager
def reference_code(reference_dir: str | Path, *modules: str) -> Iterator[types.SimpleNamespace]:
    """Import ``modules`` (e.g. ``"models"``, ``"diffusion"``) from ``reference_dir`` as attributes of a namespace;
    ``sys.path`` and ``sys.modules`` are restored afterwards."""
    reference_dir = Path(reference_dir).resolve()
    if not (reference_dir / "models.py").is_file() or not (reference_dir / "diffusion").is_dir():
        raise SystemExit(
            f"{reference_dir} is not a copy of the DeCo-Diff reference code (models.py and diffusion/ expected); "
            "see experiments/deco_diff_reference.py"
        )

    def clashes(name: str) -> bool:
        return name.partition(".")[0] in _REFERENCE_MODULES

    saved = {name: module for name, module in sys.modules.items() if clashes(name)}
    for name in saved:
        del sys.modules[name]
    stub = types.ModuleType("anomalib")
    stub.metrics = types.ModuleType("anomalib.metrics")
    sys.modules.update({"anomalib": stub, "anomalib.metrics": stub.metrics})
    sys.path.insert(0, str(reference_dir))
    try:
        yield types.SimpleNamespace(**{name: importlib.import_module(name) for name in modules})
    finally:
        sys.path.remove(str(reference_dir))
        for name in [name for name in sys.modules if clashes(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
