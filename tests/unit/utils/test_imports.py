import pytest

from anomaly_diff.models.deco_diff import DeCoDiff
from anomaly_diff.utils.imports import import_class


def test_imports_a_class_by_its_dotted_path():
    assert import_class("anomaly_diff.models.deco_diff.DeCoDiff") is DeCoDiff


@pytest.mark.parametrize("path", ["anomaly_diff.models.deco_diff.Missing", "no_such_package.Model", "Model"])
def test_a_path_that_names_no_class_is_refused_with_the_path(path):
    with pytest.raises(ValueError, match=rf"cannot import the model class '{path}'"):
        import_class(path)
