"""The console scripts ``anomaly-diff`` and ``lightning`` (and ``python -m anomaly_diff``): one dispatcher.

``--version`` and ``configs`` answer without importing torch or Lightning (a second, not ten); ``export`` runs
:mod:`anomaly_diff.export`; everything else is the LightningCLI of :mod:`anomaly_diff.cli`.
"""

import sys

from anomaly_diff import __version__
from anomaly_diff.utils.builtin_configs import CONFIG_DIR, builtin_configs


def main(args: list[str] | None = None) -> None:
    """Dispatch ``args`` (default: ``sys.argv[1:]``) to the subcommand it names."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["--version"]:
        print(f"anomaly-diff {__version__}")
    elif argv[:1] == ["configs"]:
        configs_command(argv[1:])
    elif argv[:1] == ["export"]:  # not a Trainer method
        from anomaly_diff.export import export_main

        export_main(argv[1:])
    else:
        from anomaly_diff.cli import main as cli_main

        cli_main(args)


def configs_command(args: list[str]) -> None:
    """``anomaly-diff configs``: the built-in configs' names and first comment lines; ``--path``: their folder."""
    if args == ["--path"]:
        print(CONFIG_DIR)
        return
    if args:
        print(f"anomaly-diff configs: error: unexpected {' '.join(args)}; usage: anomaly-diff configs [--path]",
              file=sys.stderr)
        raise SystemExit(2)
    configs = builtin_configs()
    width = max(map(len, configs))
    print("Built-in configs (--config <name>; to change one, copy it from the folder `anomaly-diff configs --path` "
          "prints):")
    for name, description in configs.items():
        print(f"  {name:<{width}}  {description}")
