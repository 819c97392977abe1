"""Classes named by their dotted path, as configs and checkpoints name them (``_class_path``)."""

import importlib


def import_class(class_path: str) -> type:
    """The class ``class_path`` names, e.g. ``"anomaly_diff.models.deco_diff.DeCoDiff"``.

    Raises:
        ValueError: The module cannot be imported or has no such attribute; the message names the path.
    """
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import the model class {class_path!r} ({error})") from error
