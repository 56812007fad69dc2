"""The unrolled training graph's public hook on the bundle-adjustment targets."""

from pathlib import Path

import pytest
import torch

from vo_node.model.network import VONetwork
from vo_node.train.config import load_train_config, resolve_engine_config
from vo_node.train.data import validation_clips
from vo_node.train.unroll import UnrolledModel

TINY = Path(__file__).resolve().parents[1] / "config" / "train_tiny.yaml"
PATCH_SEED = 3
TARGET_SHIFT = 2.0
"""Shift of every BA target in the hook tests, in 1/4-resolution pixels."""


@pytest.fixture(scope="module")
def setup():
    config = load_train_config(TINY)
    torch.manual_seed(0)
    network = VONetwork(resolve_engine_config(config).network)
    clip = validation_clips(config.data, config.validation.seed, 1)[0]
    return network, config, clip


def unroll(model: UnrolledModel, clip: dict) -> list:
    with torch.no_grad():
        return model.unroll_records(
            clip["images"], clip["depths"], clip["poses_cw"], clip["intrinsics"],
            torch.Generator().manual_seed(PATCH_SEED),
        )


def build(setup, transform=None) -> UnrolledModel:
    network, config, _ = setup
    return UnrolledModel(network, config.unroll, config.ba, config.loss, target_transform=transform)


def test_target_transform_sees_every_ba_target(setup):
    shapes = []

    def identity(target: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(target.shape))
        return target

    clip = setup[2]
    reference = unroll(build(setup), clip)
    observed = unroll(build(setup, identity), clip)
    assert len(shapes) == setup[1].unroll.iterations
    for shape, record in zip(shapes, observed):
        assert shape == (record.ii.shape[0], 2)
    for plain, hooked in zip(reference, observed):
        assert torch.equal(plain.coords, hooked.coords)


def test_target_transform_changes_ba_result(setup):
    clip = setup[2]
    reference = unroll(build(setup), clip)
    model = build(setup)
    model.target_transform = lambda target: target + TARGET_SHIFT
    shifted = unroll(model, clip)
    assert torch.equal(reference[0].coords_gt, shifted[0].coords_gt)
    assert not torch.allclose(reference[-1].coords, shifted[-1].coords)


def test_target_transform_wrong_shape_rejected(setup):
    model = build(setup, lambda target: target[:, :1])
    with pytest.raises(ValueError, match="target_transform"):
        unroll(model, setup[2])
