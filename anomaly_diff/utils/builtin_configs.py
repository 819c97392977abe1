"""The configs shipped inside the package (``anomaly_diff/configs``), addressed by name from the command line.

A config's name is its path under ``anomaly_diff/configs`` without ``.yaml``, e.g. ``deco_diff/embedded``; a clone's
top-level ``configs/`` is a link to the same folder. :func:`resolve_config_args` rewrites the command line before
LightningCLI parses it: a ``--config`` value that is no existing file but names a packaged config (``deco_diff/
embedded``, ``deco_diff/embedded.yaml`` or ``configs/deco_diff/embedded.yaml``) becomes that file's path, and so does
any other option's ``.yaml`` value (``--trainer.logger+=loggers/wandb.yaml``). Relative includes inside the configs
(``data: ../data/embedded.yaml``) resolve next to the packaged file; paths of runs (``runs/...``) stay relative to
the working directory.
"""

import itertools
from pathlib import Path

from anomaly_diff.errors import UnknownConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_SUFFIXES = (".yaml", ".yml")


def builtin_configs() -> dict[str, str]:
    """Every packaged config's name and what it is, sorted by name.

    What it is: the first sentence of the file's leading comment up to its first colon ('' without a comment).
    """
    configs = {}
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        comment = " ".join(line.lstrip("#").strip() for line in itertools.takewhile(_is_comment, lines))
        description = comment.split(". ")[0].split(": ")[0].rstrip(".")
        configs[path.relative_to(CONFIG_DIR).with_suffix("").as_posix()] = description
    return configs


def _is_comment(line: str) -> bool:
    return line.startswith("#")


def builtin_config(name: str) -> Path | None:
    """The packaged file ``name`` names (with or without ``.yaml`` and a leading ``configs/``), else ``None``."""
    relative = name.removeprefix("configs/")
    if not relative.endswith(_SUFFIXES):
        relative += ".yaml"
    path = (CONFIG_DIR / relative).resolve()
    return path if path.is_file() and path.is_relative_to(CONFIG_DIR) else None


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with every config value that names a packaged config (and is no existing file) replaced by its path.

    Raises:
        UnknownConfigError: A ``--config`` value that looks like a path (no inline YAML) is neither a file nor a
            packaged config; the message lists the packaged names.
    """
    resolved = list(args)
    for index, arg in enumerate(resolved):
        previous = resolved[index - 1] if index else ""
        if arg.startswith("--") and "=" in arg:
            option, value = arg.split("=", 1)
            resolved[index] = f"{option}={_resolve_value(option, value)}"
        elif previous.startswith("--") and "=" not in previous and not arg.startswith("-"):
            resolved[index] = _resolve_value(previous, arg)
    return resolved


def _resolve_value(option: str, value: str) -> str:
    """The packaged config ``value`` names, for ``--config`` and for other options' ``.yaml`` values, else ``value``."""
    is_config = option == "--config"
    if not (is_config or value.endswith(_SUFFIXES)) or Path(value).expanduser().exists():
        return value
    if is_config and any(character in value for character in ":{\n"):  # inline YAML, which jsonargparse accepts
        return value
    path = builtin_config(value)
    if path is not None:
        return str(path)
    if is_config:
        raise UnknownConfigError(
            f"--config {value}: no such file and no built-in config of that name; give a config file or one of: "
            f"{', '.join(builtin_configs())} (`anomaly-diff configs` lists them with what they do)"
        )
    return value
