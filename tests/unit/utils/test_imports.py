import sys

import pytest

from anomaly_diff.models.deco_diff import DeCoDiff
from anomaly_diff.utils.imports import MissingExtraError, import_class, require_extra


def test_imports_a_class_by_its_dotted_path():
    assert import_class("anomaly_diff.models.deco_diff.DeCoDiff") is DeCoDiff


@pytest.mark.parametrize("path", ["anomaly_diff.models.deco_diff.Missing", "no_such_package.Model", "Model"])
def test_a_path_that_names_no_class_is_refused_with_the_path(path):
    with pytest.raises(ValueError, match=rf"cannot import the model class '{path}'"):
        import_class(path)


def test_a_missing_extra_is_named_with_the_command_that_installs_it(monkeypatch):
    require_extra("yaml", "yaml", "reading YAML")  # installed: nothing happens
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    with pytest.raises(MissingExtraError) as error:
        require_extra("wandb", "wandb", "W&B logging")
    assert str(error.value) == "W&B logging needs the wandb extra: pip install 'anomaly-diff[wandb]'"
