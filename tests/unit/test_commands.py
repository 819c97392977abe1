"""The console scripts' dispatcher (``anomaly_diff.commands``): ``--version`` and ``configs`` answer by themselves,
without importing torch or Lightning; the rest goes to the LightningCLI (tested in tests/integration/test_cli.py)."""

import importlib.metadata
import subprocess
import sys

import pytest

from anomaly_diff.commands import main
from anomaly_diff.utils.builtin_configs import CONFIG_DIR


def test_configs_lists_the_names_and_their_folder(capsys):
    main(["configs"])
    out = capsys.readouterr().out
    assert "  deco_diff/embedded  " in out and "DeCo-Diff on the embedded data" in out
    main(["configs", "--path"])
    assert capsys.readouterr().out.strip() == str(CONFIG_DIR)
    with pytest.raises(SystemExit) as exit_info:
        main(["configs", "--nope"])
    assert exit_info.value.code == 2 and "usage: anomaly-diff configs [--path]" in capsys.readouterr().err


def test_version_is_the_installed_distributions(capsys):
    main(["--version"])
    assert capsys.readouterr().out == f"anomaly-diff {importlib.metadata.version('anomaly-diff')}\n"


@pytest.mark.parametrize("args", [["--version"], ["configs"], ["configs", "--path"]])
def test_version_and_configs_import_neither_torch_nor_lightning(args):
    script = ("import sys; from anomaly_diff.commands import main; main(sys.argv[1:]); "
              "print(sorted(name for name in ('torch', 'lightning') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
