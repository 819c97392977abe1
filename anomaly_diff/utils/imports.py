"""Classes named by their dotted path, as configs and checkpoints name them (``_class_path``), and optional extras."""

import importlib
import importlib.util

from anomaly_diff.errors import ConfigError, UserError


def import_class(class_path: str) -> type:
    """The class ``class_path`` names, e.g. ``"anomaly_diff.models.deco_diff.DeCoDiff"``.

    Raises:
        ValueError: The module cannot be imported or has no such attribute; the message names the path.
    """
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"cannot import the model class {class_path!r} ({error})") from error


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra of anomaly-diff that installs it."""


def require_extra(module: str, extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` can be imported.

    Args:
        module: The top-level module the feature imports, e.g. ``"wandb"``.
        extra: The extra of anomaly-diff that installs it, e.g. ``"wandb"``.
        purpose: What needs it, the start of the message, e.g. ``"W&B logging"``.
    """
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"{purpose} needs the {extra} extra: pip install 'anomaly-diff[{extra}]'")
