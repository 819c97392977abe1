from dataclasses import dataclass

import pytest

from anomaly_diff.utils.settings import as_settings


@dataclass(frozen=True)
class Example:
    size: int = 3
    mode: str = "mean"


def test_a_settings_dataclass_comes_from_itself_a_mapping_or_none():
    given = Example(5, "last")
    assert as_settings(Example, given) is given
    assert as_settings(Example, {"size": 5, "mode": "last"}) == given
    assert as_settings(Example, None) == Example()
    with pytest.raises(TypeError, match="colour"):
        as_settings(Example, {"colour": "red"})
