"""``make sweep SWEEP=<file>``: create a W&B sweep from a sweep file (``configs/sweeps/``) and run an agent on it.

It first checks that W&B can be used (the extra, ``WANDB_MODE``, credentials, the server), else ends with exit code 1
and one line saying what to do; then it replaces itself by ``wandb agent <entity>/<project>/<sweep id>``.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

import yaml

from anomaly_diff.errors import SweepError, UserError
from anomaly_diff.loggers import has_wandb_login
from anomaly_diff.utils.imports import require_extra

OFFLINE_MODES = ("offline", "disabled", "dryrun")


def check_wandb(timeout: int = 10) -> str:
    """Return the W&B user's default entity, or raise :class:`SweepError` saying why W&B cannot run a sweep."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in OFFLINE_MODES:
        raise SweepError(
            f"WANDB_MODE={mode}: a sweep needs W&B online (its server chooses the parameters); unset WANDB_MODE"
        )
    if not has_wandb_login():
        raise SweepError(
            "not logged in to W&B (no WANDB_API_KEY and no W&B entry in ~/.netrc): run `wandb login` or set "
            "WANDB_API_KEY, then try again. Without W&B, single runs still log offline: "
            "anomaly-diff fit --config <config> --trainer.logger+=configs/loggers/wandb.yaml"
        )
    import wandb

    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        viewer = wandb.Api(timeout=timeout).viewer
    except Exception as error:  # network, DNS, TLS, proxy and authentication errors of many types
        raise SweepError(
            f"W&B at {base_url} is unreachable or refused the credentials ({type(error).__name__}: {error}); "
            "check the network (or WANDB_BASE_URL) and `wandb login --relogin`"
        ) from error
    return viewer.entity if viewer is not None else ""


def load_sweep(path: Path) -> dict:
    """The sweep config of ``path``, checked for a ``command`` with ``${args}`` and ``parameters``."""
    if not path.is_file():
        raise SweepError(f"no sweep file {path}; give one of configs/sweeps/*.yaml")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or "${args}" not in config.get("command", []) or not config.get("parameters"):
        raise SweepError(f"{path} is no sweep file: it needs `parameters` and a `command` ending with ${{args}}")
    return config


def main(argv: list[str] | None = None) -> None:
    """Check W&B, create the sweep and exec ``wandb agent`` on it."""
    parser = argparse.ArgumentParser(prog="make sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep file, e.g. configs/sweeps/deco_diff.yaml")
    parser.add_argument("--count", type=int, default=None, help="runs for this agent (default: until the sweep ends)")
    parser.add_argument("--project", default=None, help="W&B project (default: the file's `project`)")
    parser.add_argument("--entity", default=None, help="W&B entity (default: your default entity)")
    args = parser.parse_args(argv)
    try:
        require_extra("wandb", "wandb", "a W&B sweep")
        config = load_sweep(args.sweep)
        viewer_entity = check_wandb()
        entity = args.entity or os.environ.get("WANDB_ENTITY") or viewer_entity
        project = args.project or config.get("project") or "anomaly-diff"
        import wandb

        sweep_id = wandb.sweep(config, project=project, entity=entity or None)
    except UserError as error:  # SweepError, MissingExtraError: one line, like the CLI
        print(f"make sweep: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    agent = shutil.which("wandb", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [agent or "wandb", "agent", *(["--count", str(args.count)] if args.count else []),
               f"{entity}/{project}/{sweep_id}" if entity else f"{project}/{sweep_id}"]
    print("make sweep: " + " ".join(command), flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
