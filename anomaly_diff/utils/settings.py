"""Settings dataclasses from any of the forms they arrive in."""

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def as_settings(kind: type[T], value: T | Mapping | None) -> T:
    """A settings dataclass (e.g. ``InpaintingConfig``) from itself, a mapping of its fields, or ``None``.

    The anomaly-diff CLI builds the dataclass, but a checkpoint written by a CLI run keeps the config's mapping in its
    hyper-parameters, which ``Module.load_from_checkpoint`` hands back to the constructor as it is.

    Args:
        kind: The dataclass.
        value: An instance, a mapping of its fields, or ``None`` for its defaults.

    Returns:
        An instance of ``kind``.
    """
    if value is None:
        return kind()
    if isinstance(value, Mapping):
        return kind(**value)
    return value
