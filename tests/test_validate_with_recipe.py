"""scripts/validate_with_recipe.py: recipe settings changed with --set."""

import pytest

from tests.conftest import SCRIPTS_DIR, load_module_from_file
from vo_node.config import to_dict
from vo_node.train.config import load_train_config

TINY = "config/train_tiny.yaml"


@pytest.fixture(scope="module")
def script():
    return load_module_from_file(SCRIPTS_DIR / "validate_with_recipe.py", "validate_with_recipe")


@pytest.fixture()
def recipe():
    return to_dict(load_train_config(TINY))


def test_settings_change_only_named_keys(script, recipe):
    changed = script.with_overrides(recipe, ["data.reverse_p=1.0", "data.max_flow=90"])
    assert changed["data"]["reverse_p"] == 1.0
    assert changed["data"]["max_flow"] == 90
    for key in ("min_flow", "n_frames", "height", "width", "low_texture"):
        assert changed["data"][key] == recipe["data"][key], key
    assert changed["optim"] == recipe["optim"]


def test_no_settings_return_recipe_unchanged(script, recipe):
    assert script.with_overrides(recipe, []) is recipe


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("data.reverse_p=2", r"data.reverse_p must lie in \[0, 1\]"),
        ("data.bogus=1", "unknown configuration key 'data.bogus'"),
        ("reverse", "must look like key=value"),
    ],
)
def test_bad_setting_is_named(script, recipe, setting, message):
    with pytest.raises(script.InputError, match=message):
        script.with_overrides(recipe, [setting])
