"""The package as a new user gets it: a wheel built from the checkout, installed into a fresh virtual environment
outside the repository, used from an empty folder with the built-in configs only.

The environment reuses the heavy dependencies already installed in the project's environment (one ``.pth`` line
adding its site-packages; the ``.pth`` files there, such as the editable install's finder, are not run, so the
project's own ``anomaly_diff`` cannot shadow the wheel's). wandb is blocked in it, as in an install without the
``[wandb]`` extra: every run here must work without it.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "anomaly_diff")
TINY = ["--data.init_args.root=data", "--data.init_args.categories=[brick,paper]",
        "--data.init_args.generated_size=64", "--data.init_args.image_size=64", "--data.init_args.crop_size=64",
        "--data.init_args.num_train=4", "--data.init_args.num_test_good=1", "--data.init_args.num_test_defective=2",
        "--data.init_args.batch_size=4", "--data.init_args.val_fraction=0", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false"]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``command``, fail the test with its output unless it succeeds, and return its stdout."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the checkout's package sources (the build writes nothing into the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--quiet",
         "--disable-pip-version-check", "-w", str(dist)], cwd=source)
    (built,) = dist.glob("anomaly_diff-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("venv")
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(root)], cwd=root)
    python = root / "bin" / "python"
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).strip())
    (purelib / "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (purelib / "without_wandb.pth").write_text("import sys; sys.modules['wandb'] = None\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", str(wheel), "--no-deps", "--force-reinstall",
         "--quiet", "--disable-pip-version-check"], cwd=root)
    return root / "bin"


@pytest.mark.slow
def test_the_wheel_holds_the_package_its_configs_and_the_license(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {name.removeprefix("anomaly_diff/configs/") for name in names if name.startswith("anomaly_diff/configs/")}
    assert shipped == {path.relative_to(REPO / "anomaly_diff" / "configs").as_posix()
                       for path in (REPO / "anomaly_diff" / "configs").rglob("*.yaml")}
    assert not any(name.startswith("configs/") for name in names)  # the checkout's link is not packaged again
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


@pytest.mark.slow
def test_a_pip_installed_wheel_runs_the_embedded_configs_from_an_empty_folder(venv, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    imported = run([str(venv / "python"), "-c", "import anomaly_diff; print(anomaly_diff.__file__)"], tmp_path, env)
    assert Path(imported.strip()).is_relative_to(venv.parent)  # the wheel's package, not the checkout's
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert run([str(venv / "anomaly-diff"), "--version"], tmp_path, env) == f"anomaly-diff {version}\n"
    assert "deco_diff/embedded" in run([str(venv / "anomaly-diff"), "configs"], tmp_path, env)

    run([str(venv / "anomaly-diff-data"), "--output", "data", "--image-size", "64", "--num-train", "4",
         "--num-test-good", "1", "--num-test-defective", "2", "--categories", "brick", "paper"], tmp_path, env)
    run([str(venv / "anomaly-diff"), "fit", "--config", "autoencoder/embedded", *TINY, "--trainer.max_steps=1",
         "--test_after_fit=false"], tmp_path, env)
    run([str(venv / "anomaly-diff"), "fit", "--config", "deco_diff/embedded", *TINY, "--trainer.max_steps=2"],
        tmp_path, env)
    trained = tmp_path / "runs" / "deco_diff" / "embedded" / "latest"
    fit_metrics = json.loads((trained / "metrics.json").read_text())
    assert sorted(fit_metrics["per_category"]) == ["brick", "paper"]
    assert json.loads((trained / "environment.json").read_text())["anomaly_diff"] == version

    run([str(venv / "anomaly-diff"), "test", "--config", "deco_diff/embedded", *TINY,
         f"--ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", "--trainer.logger.init_args.name=tested"],
        tmp_path, env)
    (tested,) = (tmp_path / "runs" / "tested").glob("version_*")
    assert json.loads((tested / "metrics.json").read_text())["per_category"] == fit_metrics["per_category"]
