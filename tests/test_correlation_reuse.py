"""Correlation that reuses each edge's integer-grid products between calls.

At inference an edge's patch features and target map do not change, so only edges whose grid
corners moved need new products. These tests check that the reusing path returns what a fresh
correlation returns, that it really reuses, and that tracking gives the same trajectory with
and without reuse.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import SCRIPTS_DIR, load_module_from_file
from tests.test_model import correlation_case
from vo_node.demo_data import render_demo_sequence
from vo_node.io.sequence import open_sequence
from vo_node.model.correlation import (
    MISSING_CORNER,
    CorrelationPyramid,
    GridProducts,
    correlate,
    correlate_reusing,
)
from vo_node.odometry.frontend import VisualOdometry
from vo_node.run import load_engine

TRACKED_FRAMES = 40


def moved(coords: torch.Tensor, step: int) -> torch.Tensor:
    """Return ``coords`` ``(E, 2, P, P)`` after a move that differs per edge and per step.

    Edge 0 stays put, edge 1 moves by 0.01 px (usually within its grid cell), the others by up
    to 1.5 px, and at step 2 edge 2 jumps far outside the map, to come back at step 3.
    """
    generator = torch.Generator().manual_seed(100 + step)
    shift = 1.5 * (2 * torch.rand(coords.shape[0], 2, 1, 1, generator=generator) - 1)
    shift = shift.to(coords.dtype)
    shift[0] = 0.0
    shift[1] = 0.01
    result = coords + shift
    if step in (2, 3):
        result[2] += 500.0 if step == 2 else -500.0
    return result


def test_reusing_matches_fresh_correlation_over_moves():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=12, seed=7, spread=1.2)
    coords[3] = coords[3, :, 1:2, 1:2] + 2.5 * (coords[3] - coords[3, :, 1:2, 1:2])  # wide
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    store = GridProducts.empty(len(kk), pyramid, patch_size=3)
    for step in range(5):
        expected = correlate(gmap, pyramid, coords, kk, jj)
        result = correlate_reusing(gmap, pyramid, coords, kk, jj, store)
        assert torch.allclose(result, expected, rtol=0.0, atol=1e-12), f"step {step}"
        assert expected.abs().max() > 1.0
        if step == 3:
            assert torch.all(result[2] == 0), "edge 2 lies far outside the map"
        coords = moved(coords, step)


def test_unmoved_edges_reuse_their_products():
    # Changing the maps behind the store's back shows which edges were recomputed: the moved
    # ones follow the new maps, the unmoved edge 0 keeps the products of the old ones.
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=6, seed=8)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    store = GridProducts.empty(len(kk), pyramid, patch_size=3)
    before = correlate_reusing(gmap, pyramid, coords, kk, jj, store)
    new_coords = coords.clone()
    new_coords[1:] += 4.0  # four pixels: a new grid corner at the finest level
    doubled = CorrelationPyramid.from_fmap(2.0 * fmap, 2, 3)
    result = correlate_reusing(gmap, doubled, new_coords, kk, jj, store)
    assert torch.allclose(result[0], before[0], atol=1e-12), "edge 0 did not move: reused"
    finest = slice(0, result.shape[1] // 2)
    fresh = correlate(gmap, doubled, new_coords, kk, jj)
    assert torch.allclose(result[1:, finest], fresh[1:, finest], atol=1e-12)
    assert fresh[0].abs().max() > 1.0
    assert not torch.allclose(result[0], fresh[0]), "edge 0 kept the old maps' products"
    assert store.reused == [1, 1], "only edge 0 kept its corners, at both levels"
    assert store.computed[0] == 6 + 5, "six edges at the first call, five moved at the second"


def test_store_follows_removed_and_added_edges():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=10, seed=9)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    store = GridProducts.empty(len(kk), pyramid, patch_size=3)
    correlate_reusing(gmap, pyramid, coords, kk, jj, store)
    keep = torch.tensor([True, False, True, True, False, True, True, True, False, True])
    _, _, extra_coords, extra_kk, extra_jj = correlation_case(num_edges=30, seed=10)
    store.keep(keep)
    store.append(len(extra_kk))  # beyond the capacity: the buffers grow
    assert len(store) == int(keep.sum()) + 30
    assert store.capacity >= len(store)
    assert torch.all(store.corners[int(keep.sum()) :] == MISSING_CORNER)
    coords = torch.cat([coords[keep], extra_coords])
    kk, jj = torch.cat([kk[keep], extra_kk]), torch.cat([jj[keep], extra_jj])
    for step in range(2):
        expected = correlate(gmap, pyramid, coords, kk, jj)
        result = correlate_reusing(gmap, pyramid, coords, kk, jj, store)
        assert torch.allclose(result, expected, rtol=0.0, atol=1e-12)
        coords = moved(coords, step)


def test_half_precision_products_match_fresh():
    # Under float16 autocast (the engine's on CUDA, CPU autocast replaces it here) the products
    # of bfloat16 maps come out in float16, and the store must not round them again.
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=12, seed=7)
    gmap, fmap, coords = gmap.float(), fmap.float(), coords.float()
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3, dtype=torch.bfloat16)
    store = GridProducts.empty(len(kk), pyramid, patch_size=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        expected = correlate(gmap, pyramid, coords, kk, jj)
        result = correlate_reusing(gmap, pyramid, coords, kk, jj, store)
    assert expected.abs().max() > 1.0
    assert torch.allclose(result, expected, rtol=0.0, atol=1e-4)


def identical_coords_case(num_edges: int):
    """Return a correlation case whose edges share one set of coordinates but differ in patch
    and target frame, so only the store's row order distinguishes their products."""
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=num_edges, seed=11)
    centre = torch.tensor([10.3, 7.6], dtype=coords.dtype).view(1, 2, 1, 1)
    coords = (coords[:1] - coords[:1, :, 1:2, 1:2] + centre).expand_as(coords).clone()
    kk = torch.arange(num_edges) % gmap.shape[0]
    jj = torch.arange(num_edges) % fmap.shape[0]
    return gmap, fmap, coords, kk, jj


def test_keep_keeps_rows_aligned():
    gmap, fmap, coords, kk, jj = identical_coords_case(6)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    store = GridProducts.empty(len(kk), pyramid, patch_size=3)
    correlate_reusing(gmap, pyramid, coords, kk, jj, store)
    keep = torch.tensor([True, False, True, True, True, False])
    store.keep(keep)
    reused = list(store.reused)
    result = correlate_reusing(gmap, pyramid, coords[keep], kk[keep], jj[keep], store)
    expected = correlate(gmap, pyramid, coords[keep], kk[keep], jj[keep])
    assert [after - before for after, before in zip(store.reused, reused)] == [4, 4]
    assert torch.allclose(result, expected, rtol=0.0, atol=1e-12)


def test_append_within_capacity_forgets_rows():
    gmap, fmap, coords, kk, jj = identical_coords_case(10)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    store = GridProducts.empty(len(kk), pyramid, patch_size=3)
    correlate_reusing(gmap, pyramid, coords, kk, jj, store)
    store.keep(torch.ones(10, dtype=torch.bool))  # rows 5..9 stay in the spare buffer
    store.keep(torch.arange(10) < 5)  # back to that buffer, rows 5..9 left behind
    capacity = store.capacity
    store.append(5)
    assert store.capacity == capacity, "appended within the capacity, without growing"
    assert torch.all(store.corners[5:] == MISSING_CORNER)
    # The new edges have the removed edges' coordinates but other patches and frames.
    new_kk, new_jj = torch.cat([kk[:5], kk[5:].flip(0)]), torch.cat([jj[:5], jj[5:].roll(1)])
    result = correlate_reusing(gmap, pyramid, coords, new_kk, new_jj, store)
    expected = correlate(gmap, pyramid, coords, new_kk, new_jj)
    assert torch.allclose(result, expected, rtol=0.0, atol=1e-12)


def test_misaligned_store_names_the_fix():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=5)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    store = GridProducts.empty(4, pyramid, patch_size=3)
    with pytest.raises(ValueError, match=r"4 rows for 5 edges.*GridProducts.keep"):
        correlate_reusing(gmap, pyramid, coords, kk, jj, store)


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    return render_demo_sequence(tmp_path_factory.mktemp("reuse"), num_frames=TRACKED_FRAMES)


@pytest.fixture(scope="module")
def demo(demo_path):
    return open_sequence(demo_path)


def track(sequence, reuse: bool) -> tuple[np.ndarray, int]:
    """Return the finished ``T_world_cam`` trajectory ``(N, 7)`` and the graph's final edge
    count, tracked with the shipped model and ``frontend.reuse_correlation=reuse``."""
    torch.set_num_threads(1)
    overrides = [f"frontend.reuse_correlation={str(reuse).lower()}"]
    config, network, device = load_engine("accurate", overrides, None, "cpu")
    odometry = VisualOdometry(config, network, device)
    for frame in sequence:
        odometry.track(frame.image, frame.timestamp_ns, sequence.camera.intrinsics)
    edges = odometry.graph.num_edges
    stored = odometry.graph.grid_products
    if reuse:
        assert stored is not None and len(stored) == edges, "the store follows the edges"
    else:
        assert stored is None
    return odometry.finish().poses, edges


def test_tracking_is_the_same_with_and_without_reuse(demo):
    with_reuse, edges = track(demo, reuse=True)
    without, edges_without = track(demo, reuse=False)
    assert edges == edges_without > 0
    assert with_reuse.shape == (TRACKED_FRAMES, 7)
    np.testing.assert_allclose(with_reuse, without, rtol=0.0, atol=1e-5)


def test_reuse_script_prints_shares(demo_path, capsys):
    script = load_module_from_file(SCRIPTS_DIR / "correlation_reuse.py", "correlation_reuse")
    torch.set_num_threads(1)
    assert script.main([str(demo_path), "--config", "small"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["level 0", "level 1"]
    shares = [float(line.split()[2]) for line in lines]
    # The rendered camera moves a few pixels per frame, so many edges keep their corners from one
    # frame to the next, and the coarser level keeps them more often.
    assert 20.0 < shares[0] < 100.0
    assert shares[0] <= shares[1] < 100.0


def test_reuse_script_rejects_reuse_off(demo_path, tmp_path, capsys):
    config = tmp_path / "no_reuse.yaml"
    config.write_text("name: no_reuse\nfrontend:\n  reuse_correlation: false\n")
    script = load_module_from_file(SCRIPTS_DIR / "correlation_reuse.py", "correlation_reuse")
    assert script.main([str(demo_path), "--config", str(config)]) == 2
    assert "Set it to true" in capsys.readouterr().err
