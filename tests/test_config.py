"""The configuration carrier: presets, overrides and rejection of invalid keys and values."""

import re
from pathlib import Path

import pytest

from vo_node.config import (
    ConfigError,
    EngineConfig,
    apply_overrides,
    load_engine_config,
    parse_override,
)


@pytest.mark.parametrize("name", ["small", "accurate", "full"])
def test_presets_load_and_validate(name):
    config = load_engine_config(name)
    assert config.name == name
    assert config.network.patch_size == 3


def test_full_preset_matches_defaults():
    full = load_engine_config("full")
    defaults = EngineConfig()
    assert full.network == defaults.network
    assert full.frontend == defaults.frontend


def test_small_preset_is_smaller():
    small = load_engine_config("small")
    full = load_engine_config("full")
    assert small.network.context_dim < full.network.context_dim
    assert small.frontend.patches_per_frame < full.frontend.patches_per_frame


def test_accurate_preset_differs_only_in_patches():
    import dataclasses

    small = load_engine_config("small")
    accurate = load_engine_config("accurate")
    assert accurate.frontend.patches_per_frame == 2 * small.frontend.patches_per_frame
    # Same network sizes, so the shipped model file runs with either preset.
    assert accurate.network == small.network
    assert accurate.ba == small.ba
    assert accurate.max_image_width == small.max_image_width
    assert dataclasses.replace(accurate.frontend, patches_per_frame=32) == small.frontend


def test_override_changes_one_field():
    config = apply_overrides(EngineConfig(), {"frontend.patches_per_frame": 32})
    assert config.frontend.patches_per_frame == 32
    assert config.frontend.patch_lifetime == EngineConfig().frontend.patch_lifetime


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="frontend.bogus"):
        apply_overrides(EngineConfig(), {"frontend.bogus": 1})


def test_unknown_yaml_key_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("network:\n  matching_dims: 64\n")
    with pytest.raises(ConfigError, match="network.matching_dims"):
        load_engine_config(path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("device", "tpu", "device must be one of"),
        ("frontend.patches_per_frame", 0, "must be positive"),
        ("network.patch_size", 4, "must be odd"),
        ("frontend.patches_per_frame", "many", "must be an integer"),
        ("frontend.removal_window", 3, "removal_window"),
        ("frontend.low_confidence_ratio", -1.0, "low_confidence_ratio must be 0"),
        ("frontend.confidence_window", 4, "confidence_window must be at least 5"),
    ],
)
def test_invalid_values_rejected(key, value, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(EngineConfig(), {key: value})


def test_missing_preset_lists_available():
    with pytest.raises(ConfigError, match="available presets: .*small"):
        load_engine_config("nonexistent")


def test_missing_preset_lists_only_engine_presets():
    with pytest.raises(ConfigError) as error:
        load_engine_config("nope")
    listed = str(error.value).split("available presets: ")[1].split(", ")
    assert "small" in listed
    assert "full" in listed
    assert [name for name in listed if name.startswith("train_")] == []
    assert "vo_node" not in listed


def test_train_rejects_engine_preset_as_recipe():
    from vo_node.train.config import load_train_config

    with pytest.raises(ConfigError) as error:
        load_train_config("config/small.yaml")
    message = str(error.value)
    assert "config/small.yaml is an engine preset, not a training recipe" in message
    assert "config/train_*.yaml" in message
    assert "engine: small" in message
    assert "unknown configuration key" not in message


def test_train_recipe_with_shared_keys_loads(tmp_path):
    from vo_node.train.config import load_train_config

    # device and seed exist in both schemas, so a recipe that sets only them is still a recipe.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("device: cpu\nseed: 3\n")
    assert load_train_config(recipe).seed == 3


def test_parse_override_reads_yaml_values():
    assert parse_override("ba.iterations=4") == ("ba.iterations", 4)
    assert parse_override("device=cpu") == ("device", "cpu")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("ba.iterations")


@pytest.mark.parametrize("recipe", ["engine", "training"])
def test_bad_yaml_file_names_path(tmp_path, recipe):
    from vo_node.train.config import load_train_config

    load = load_engine_config if recipe == "engine" else load_train_config
    description = "configuration file" if recipe == "engine" else "training configuration"
    broken = tmp_path / "broken.yaml"
    broken.write_text("network: [unclosed\n")
    with pytest.raises(ConfigError) as error:
        load(broken)
    assert f"{description} {broken} is not valid YAML" in str(error.value)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as error:
        load(missing)
    assert f"{description} {missing} not found" in str(error.value)


def test_small_preset_real_time_settings():
    """The real-time settings measured in docs/benchmarks.md (2026-12-05), on the shipped sizes."""
    small = load_engine_config("small")
    full = load_engine_config("full")
    assert (small.frontend.patch_lifetime, small.frontend.removal_window) == (6, 8)
    assert small.ba.iterations == 1
    assert small.ba.trust_region
    assert small.frontend.removal_window >= small.frontend.optimization_window
    assert (small.network.matching_dim, small.network.context_dim) == (32, 64)
    assert small.frontend.patches_per_frame * small.frontend.patch_lifetime < (
        full.frontend.patches_per_frame * full.frontend.patch_lifetime
    )


def test_removed_small_fast_preset_names_the_available_ones():
    with pytest.raises(ConfigError, match="available presets: accurate, full, small"):
        load_engine_config("small_fast")


def test_unknown_override_section_lists_sections():
    from vo_node.config import apply_overrides, load_engine_config

    with pytest.raises(ConfigError, match="'nonexistent' is not a section") as raised:
        apply_overrides(load_engine_config("small"), {"nonexistent.key": 1})
    assert "frontend" in str(raised.value)
    assert "ba" in str(raised.value)


@pytest.mark.parametrize("recipe", ["engine", "training"])
def test_yaml_list_and_binary_files_rejected(tmp_path, recipe):
    from vo_node.train.config import load_train_config

    load = load_engine_config if recipe == "engine" else load_train_config
    listed = tmp_path / "listed.yaml"
    listed.write_text("- network\n- frontend\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(listed)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00network: 1\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(binary)


def test_override_values_that_break_parsing():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("frontend.patches_per_frame=[1")
    key, value = parse_override("frontend.patches_per_frame=.inf")
    with pytest.raises(ConfigError, match="patches_per_frame must be an integer"):
        apply_overrides(load_engine_config("small"), {key: value})


def numeric_keys() -> list[tuple[str, type]]:
    """Return the dotted key and type of every int or float field of the engine configuration."""
    import dataclasses

    keys = []
    config = EngineConfig()
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            for inner in dataclasses.fields(value):
                inner_value = getattr(value, inner.name)
                if type(inner_value) in (int, float):
                    keys.append((f"{field.name}.{inner.name}", type(inner_value)))
        elif type(value) in (int, float):
            keys.append((field.name, type(value)))
    return keys


@pytest.mark.parametrize("key, kind", numeric_keys())
def test_every_numeric_key_rejects_non_finite_and_huge(key, kind):
    values = [float("nan"), float("inf"), float("-inf")] if kind is float else [-(10**19)]
    for value in values:
        with pytest.raises(ConfigError) as raised:
            apply_overrides(EngineConfig(), {key: value})
        message = str(raised.value)
        assert key in message
        if kind is float:
            assert str(value) in message
            assert "must be" in message


OUT_OF_RANGE = [
    ("frontend.frame_memory", 0, "at least 35"),
    ("frontend.max_keyframes", 0, "at least 36"),
    ("max_image_width", -100, "at least 32"),
    ("max_image_width", 8, "at least 32"),
    ("ba.pose_damping", float("nan"), "finite number 0 or more"),
    ("frontend.keyframe_threshold", float("nan"), "finite number 0 or more"),
    ("frontend.keyframe_threshold", -1, "0 or more"),
    ("ba.min_depth", -1, "0 or more"),
    ("ba.max_inverse_depth", -1, "above 0.0001"),
    ("ba.max_inverse_depth", 1e-5, "above 0.0001"),
    ("ba.lm_damping_factor", float("nan"), "finite number above 1"),
    ("ba.lm_damping", 0, "positive"),
    ("network.patch_size", -1, "positive"),
    ("network.correlation_radius", -1, "0 or more"),
    ("frontend.keyframe_index", 0, "at least 1"),
    ("frontend.motion_damping", 1.5, "at most 1"),
    ("frontend.init_iterations", 0, "positive"),
    ("frontend.final_iterations", -1, "0 or more"),
]


@pytest.mark.parametrize("key, value, valid_range", OUT_OF_RANGE)
def test_out_of_range_value_names_key_value_range(key, value, valid_range):
    with pytest.raises(ConfigError) as raised:
        apply_overrides(EngineConfig(), {key: value})
    message = str(raised.value)
    assert message.startswith(f"{key} must be")
    assert f"got {value}" in message
    assert valid_range in message


@pytest.mark.parametrize("key, value", [
    ("max_image_width", 0), ("max_image_width", 32), ("frontend.keyframe_threshold", 0.0),
    ("frontend.frame_memory", 35), ("ba.min_depth", 0.0), ("seed", -1),
])
def test_boundary_values_accepted(key, value):
    config = apply_overrides(EngineConfig(), {key: value})
    assert config is not None


def test_override_of_section_says_it_is_a_section():
    with pytest.raises(ConfigError) as raised:
        apply_overrides(EngineConfig(), dict([parse_override("frontend=3")]))
    message = str(raised.value)
    assert "frontend is a section, not a value" in message
    assert "frontend.KEY=VALUE" in message
    assert "frontend." + " must" not in message


def test_yaml_section_that_is_a_number(tmp_path):
    path = tmp_path / "flat.yaml"
    path.write_text("frontend: 3\n")
    with pytest.raises(ConfigError, match=r"^frontend must be a section of key: value lines"):
        load_engine_config(path)


RECIPES = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("recipe", ["train_small.yaml", "train_tiny.yaml"])
def test_mapping_override_suggests_working_fix(recipe):
    from vo_node.train.config import load_train_config

    path = RECIPES / recipe
    recipe_mapping = load_train_config(path).engine_overrides
    for text in ["engine_overrides=5", "engine_overrides.network.matching_dim=16"]:
        with pytest.raises(ConfigError) as raised:
            load_train_config(path, dict([parse_override(text)]))
        message = str(raised.value)
        assert "engine_overrides is a mapping" in message, text
        assert "replaces the whole mapping" in message, text
        suggestion = re.search(r"such as '([^']+)'", message)
        assert suggestion is not None, message
        if not recipe_mapping:
            assert suggestion.group(1) == "engine_overrides={KEY: VALUE}"
            continue
        # The suggestion, typed as shown, restores the recipe's own entries.
        config = load_train_config(path, dict([parse_override(suggestion.group(1))]))
        assert config.engine_overrides == recipe_mapping


def test_mapping_override_accepts_yaml_mapping():
    from vo_node.train.config import load_train_config, resolve_engine_config

    override = parse_override("engine_overrides={network.context_dim: 32}")
    config = load_train_config(RECIPES / "train_small.yaml", dict([override]))

    assert config.engine_overrides == {"network.context_dim": 32}
    assert resolve_engine_config(config).network.context_dim == 32
