"""The patch network: encoders, patch selection, correlation, update operator and model files."""

import re

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vo_node.config import EngineConfig, NetworkConfig, load_engine_config, to_dict
from vo_node.model import (
    CorrelationPyramid,
    ModelFileError,
    VONetwork,
    correlate,
    load_model,
    save_model,
)
from vo_node.model.encoder import count_parameters
from vo_node.model.patchifier import image_gradient_score
from vo_node.model.update import GradientClamp, SoftAggregation, scatter_softmax, temporal_neighbors

HEIGHT, WIDTH = 64, 96
DPVO_PARAMETERS = 3_384_324
"""Parameter count of DPVO's network (fnet 181,440 + inet 198,080 + update 3,004,804)."""


def make_images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, HEIGHT, WIDTH, generator=generator) * 255


@pytest.fixture(scope="module")
def small_network():
    torch.manual_seed(0)
    return VONetwork(load_engine_config("small").network).eval()


# --- shapes and parameters -------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["small", "full"])
def test_network_output_shapes(preset):
    config = load_engine_config(preset).network
    network = VONetwork(config).eval()
    patches_per_frame, frames = 8, 2
    with torch.no_grad():
        batch = network.patchify(make_images(frames), patches_per_frame)
        num_patches = frames * patches_per_frame
        assert batch.fmap.shape == (frames, config.matching_dim, HEIGHT // 4, WIDTH // 4)
        assert batch.gmap.shape == (num_patches, config.matching_dim, 3, 3)
        assert batch.context.shape == (num_patches, config.context_dim)
        assert batch.patches.shape == (num_patches, 3, 3, 3)
        assert batch.frame_index.tolist() == [0] * 8 + [1] * 8
        assert torch.all(batch.patches[:, 2] == 1.0)

        kk = torch.arange(num_patches).repeat(2)
        jj = torch.tensor([0, 1]).repeat_interleave(num_patches)
        ii = batch.frame_index[kk]
        coords = batch.patches[kk, :2] + 0.3
        corr = network.correlate(batch.gmap, batch.fmap, coords, kk, jj)
        assert corr.shape == (2 * num_patches, 882)
        hidden = torch.zeros(2 * num_patches, config.context_dim)
        hidden, delta, weight = network.update(hidden, batch.context, corr, ii, jj, kk)
    assert hidden.shape == (2 * num_patches, config.context_dim)
    assert delta.shape == (2 * num_patches, 2)
    assert weight.shape == (2 * num_patches, 2)
    assert torch.all((weight > 0) & (weight < 1))


def test_full_preset_parameter_count_matches_dpvo():
    network = VONetwork(EngineConfig().network)
    assert count_parameters(network) == DPVO_PARAMETERS


def test_small_preset_is_lighter():
    small = count_parameters(VONetwork(load_engine_config("small").network))
    assert small < DPVO_PARAMETERS / 2


@pytest.mark.parametrize("shape", [(1, 3, 60, 96), (1, 3, 64, 90), (1, 1, 64, 96), (3, 64, 96)])
def test_patchify_rejects_bad_image_shapes(small_network, shape):
    with pytest.raises(ValueError, match="multiple of 16|shape"):
        small_network.patchify(torch.zeros(shape), 4)


def test_patchify_rejects_unknown_selection(small_network):
    with pytest.raises(ValueError, match="selection"):
        small_network.patchify(make_images(1), 4, selection="sift")


# --- patch selection -------------------------------------------------------------------------


def centres_of(network, images, seed, selection="random", count=32):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        batch = network.patchify(images, count, generator, selection)
    return batch.patches[:, :2, 1, 1]


@pytest.mark.parametrize("selection", ["random", "gradient_bias"])
def test_patch_centres_inside_border(small_network, selection):
    centres = centres_of(small_network, make_images(2), seed=3, selection=selection, count=200)
    u, v = centres[:, 0], centres[:, 1]
    assert torch.all(u >= 1)
    assert torch.all(u <= WIDTH // 4 - 2)
    assert torch.all(v >= 1)
    assert torch.all(v <= HEIGHT // 4 - 2)
    assert torch.all(centres == centres.round())


def test_patch_grid_and_features_follow_centre(small_network):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        batch = small_network.patchify(make_images(2), 5, generator)
    for index in range(10):
        u, v = batch.patches[index, :2, 1, 1].long().tolist()
        frame = int(batch.frame_index[index])
        assert batch.patches[index, 0, 0, 0] == u - 1
        assert batch.patches[index, 1, 0, 0] == v - 1
        expected = batch.fmap[frame, :, v - 1 : v + 2, u - 1 : u + 2]
        assert torch.equal(batch.gmap[index], expected)


def test_patch_centres_repeat_with_same_seed(small_network):
    images = make_images(1)
    first = centres_of(small_network, images, seed=7)
    second = centres_of(small_network, images, seed=7)
    other = centres_of(small_network, images, seed=8)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_gradient_bias_prefers_texture(small_network):
    generator = torch.Generator().manual_seed(0)
    images = torch.full((1, 3, HEIGHT, WIDTH), 128.0)
    texture = torch.rand(1, 1, HEIGHT, WIDTH // 2, generator=generator) * 255
    images[..., WIDTH // 2 :] = texture
    score = image_gradient_score(images)[0]
    random = centres_of(small_network, images, seed=5, count=24).long()
    biased = centres_of(small_network, images, seed=5, selection="gradient_bias", count=24).long()
    random_score = score[random[:, 1], random[:, 0]].mean()
    biased_score = score[biased[:, 1], biased[:, 0]].mean()
    assert biased_score > 1.5 * random_score
    assert (biased[:, 0] >= WIDTH // 8 - 1).float().mean() > 0.9


# --- correlation ------------------------------------------------------------------------------


def brute_force_correlation(gmap, fmap, coords, kk, jj, radius, levels):
    """Explicit bilinear sampling with zeros outside the image, then dot products (numpy)."""
    gmap, fmap, coords = gmap.numpy(), fmap.numpy(), coords.numpy()
    maps = [fmap]
    for _ in range(1, levels):
        frames, channels, height, width = maps[-1].shape
        pooled = maps[-1].reshape(frames, channels, height // 4, 4, width // 4, 4).mean(axis=(3, 5))
        maps.append(pooled)

    def sample(image, x, y):
        value = np.zeros(image.shape[0])
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
            if 0 <= xi < image.shape[2] and 0 <= yi < image.shape[1]:
                value += (1 - abs(x - xi)) * (1 - abs(y - yi)) * image[:, yi, xi]
        return value

    size = gmap.shape[-1]
    window = 2 * radius + 1
    out = np.zeros((len(kk), levels, size, size, window, window))
    for e, (k, j) in enumerate(zip(kk.tolist(), jj.tolist())):
        for level, level_map in enumerate(maps):
            for a in range(size):
                for b in range(size):
                    x = coords[e, 0, a, b] / 4**level
                    y = coords[e, 1, a, b] / 4**level
                    for wy in range(window):
                        for wx in range(window):
                            feature = sample(level_map[j], x - radius + wx, y - radius + wy)
                            out[e, level, a, b, wy, wx] = feature @ gmap[k, :, a, b]
    return torch.from_numpy(out.reshape(len(kk), -1))


def correlation_case(num_edges=10, seed=0, fractional=True, spread=1.0):
    generator = torch.Generator().manual_seed(seed)
    fmap = torch.randn(3, 4, 16, 24, generator=generator, dtype=torch.float64)
    gmap = torch.randn(6, 4, 3, 3, generator=generator, dtype=torch.float64)
    kk = torch.randint(0, 6, (num_edges,), generator=generator)
    jj = torch.randint(0, 3, (num_edges,), generator=generator)
    centre = torch.rand(num_edges, 2, 1, 1, generator=generator, dtype=torch.float64)
    centre = centre * torch.tensor([30.0, 22.0]).view(1, 2, 1, 1) - 3.0  # some near the border
    if not fractional:
        centre = centre.round()
    steps = torch.arange(-1.0, 2.0, dtype=torch.float64)
    grid = torch.stack([steps.view(1, 3).expand(3, 3), steps.view(3, 1).expand(3, 3)])
    coords = centre + spread * grid
    return gmap, fmap, coords, kk, jj


@pytest.mark.parametrize("fractional", [False, True])
def test_correlation_matches_brute_force(fractional):
    gmap, fmap, coords, kk, jj = correlation_case(fractional=fractional)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    result = correlate(gmap, pyramid, coords, kk, jj)
    expected = brute_force_correlation(gmap, fmap, coords, kk, jj, radius=3, levels=2)
    assert result.shape == (10, 882)
    assert torch.allclose(result, expected, atol=1e-10)
    assert expected.abs().max() > 1.0


def test_correlation_wide_patches_match_brute_force():
    # Pixels 2.5 apart do not fit one shared window, so they take the per-pixel path.
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=4, seed=1, spread=2.5)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    coords[0] = coords[1] / 2.5  # a mix of narrow and wide edges in one call
    result = correlate(gmap, pyramid, coords, kk, jj)
    expected = brute_force_correlation(gmap, fmap, coords, kk, jj, radius=3, levels=2)
    assert torch.allclose(result, expected, atol=1e-10)


def test_correlation_zero_far_outside():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=4)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    far = coords.clone()
    far[0] += 200.0
    far[1] -= 200.0
    far[2, 0] = 1e12
    far[3, 1] = float("nan")
    result = correlate(gmap, pyramid, far, kk, jj)
    assert torch.all(result == 0)


def test_correlation_outside_edges_match_brute_force():
    # Edges beside the 16x24 map: outside the finest level (skipped there) but inside the
    # pooled one, a wide edge among them, and edges that only touch the border. The skipped
    # and per-pixel edges share calls with shared-window edges, with and without gradients.
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=8, seed=6)
    shifts = [(-12.0, 3.0), (30.0, 5.0), (4.0, -9.5), (6.0, 21.5), (-4.6, 2.0), (27.2, 18.3)]
    for edge, (du, dv) in enumerate(shifts):
        coords[edge] += torch.tensor([du, dv], dtype=torch.float64).view(2, 1, 1) - coords[
            edge, :, 1, 1
        ].view(2, 1, 1)
    coords[0] = coords[0, :, 1:2, 1:2] + 2.5 * (coords[0] - coords[0, :, 1:2, 1:2])  # wide
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    expected = brute_force_correlation(gmap, fmap, coords, kk, jj, radius=3, levels=2)
    result = correlate(gmap, pyramid, coords, kk, jj)
    finest = result.view(8, 2, -1)[:, 0]
    assert torch.all(finest[:4] == 0), "edges 0-3 lie outside the finest level"
    pooled = expected.view(8, 2, -1)[:4, 1].abs().amax(dim=1)
    assert torch.all(pooled > 0.1), "but not outside the pooled one"
    assert torch.allclose(result, expected, atol=1e-10)
    recorded = correlate(gmap.clone().requires_grad_(), pyramid, coords, kk, jj, chunk_size=3)
    assert torch.allclose(recorded.detach(), expected, atol=1e-10)


def test_correlation_half_precision_coordinates():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=6, seed=4)
    gmap, fmap, coords = gmap.float(), fmap.float(), coords.float()
    coords[0] = float("nan")
    coords[1] = 1.0e5
    pyramid = CorrelationPyramid.from_fmap(fmap, num_levels=2, radius=3)
    expected = correlate(gmap, pyramid, coords, kk, jj)
    result = correlate(gmap, pyramid, coords.half(), kk, jj)
    assert result.dtype == torch.float16
    assert torch.isfinite(result).all()
    assert torch.allclose(result.float(), expected, atol=0.05 * float(expected.abs().max()))


def test_correlation_integer_coordinates_match_float():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=6, seed=5, fractional=False)
    gmap, fmap, coords = gmap.float(), fmap.float(), coords.float()
    pyramid = CorrelationPyramid.from_fmap(fmap, num_levels=2, radius=3)
    expected = correlate(gmap, pyramid, coords, kk, jj)
    result = correlate(gmap, pyramid, coords.long(), kk, jj)
    assert torch.equal(result, expected)


def test_correlation_chunked_equals_unchunked():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=23, seed=2, spread=1.6)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3)
    whole = correlate(gmap, pyramid, coords, kk, jj, chunk_size=1000)
    for chunk_size in (1, 4, 7):
        assert torch.allclose(correlate(gmap, pyramid, coords, kk, jj, chunk_size), whole)


def test_correlation_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(4)
    fmap = torch.randn(2, 2, 8, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    gmap = torch.randn(3, 2, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    kk, jj = torch.tensor([0, 1, 2]), torch.tensor([1, 0, 1])
    steps = torch.arange(-1.0, 2.0, dtype=torch.float64)
    grid = torch.stack([steps.view(1, 3).expand(3, 3), steps.view(3, 1).expand(3, 3)])
    centre = torch.tensor([[3.3, 4.6], [0.2, 6.9], [5.5, 2.25]], dtype=torch.float64)
    coords = (centre[:, :, None, None] + grid * torch.tensor([1.0, 1.0, 2.2]).view(3, 1, 1, 1))

    def function(fmap, gmap):
        pyramid = CorrelationPyramid.from_fmap(fmap, 2, 1)
        return correlate(gmap, pyramid, coords, kk, jj, chunk_size=2)

    assert torch.autograd.gradcheck(function, (fmap, gmap), fast_mode=True)


def test_correlation_gradients_cover_coords_and_wide_patches():
    # Edge 2 spreads 2.2 pixels, so it takes the per-pixel path; chunks of 2 split the edges.
    generator = torch.Generator().manual_seed(5)
    fmap = torch.randn(2, 2, 8, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    gmap = torch.randn(3, 2, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    kk, jj = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 1, 1])
    steps = torch.arange(-1.0, 2.0, dtype=torch.float64)
    grid = torch.stack([steps.view(1, 3).expand(3, 3), steps.view(3, 1).expand(3, 3)])
    centre = torch.tensor([[3.3, 4.6], [0.2, 6.9], [5.5, 2.25], [7.6, -0.4]], dtype=torch.float64)
    spread = torch.tensor([1.0, 1.0, 2.2, 0.7], dtype=torch.float64).view(4, 1, 1, 1)
    coords = (centre[:, :, None, None] + grid * spread).requires_grad_()

    def function(fmap, gmap, coords):
        pyramid = CorrelationPyramid.from_fmap(fmap, 2, 1)
        return correlate(gmap, pyramid, coords, kk, jj, chunk_size=2)

    assert torch.autograd.gradcheck(function, (fmap, gmap, coords), fast_mode=True)


def test_correlation_gradients_independent_of_chunks():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=23, seed=3, spread=1.6)
    gradients = []
    for chunk_size in (1, 7, 1000):
        inputs = [tensor.clone().requires_grad_() for tensor in (gmap, fmap, coords)]
        pyramid = CorrelationPyramid.from_fmap(inputs[1], 2, 3)
        result = correlate(inputs[0], pyramid, inputs[2], kk, jj, chunk_size)
        result.square().sum().backward()
        gradients.append([tensor.grad for tensor in inputs])
    for chunked in gradients[:2]:
        for gradient, whole in zip(chunked, gradients[2]):
            torch.testing.assert_close(gradient, whole, rtol=1e-12, atol=1e-12)


class _NewMapSizedTensors(TorchDispatchMode):
    """Counts op outputs with at least ``size`` elements that are new storage, not an input's."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        leaves = tree_leaves((args, kwargs))
        inputs = {leaf.untyped_storage().data_ptr() for leaf in leaves if torch.is_tensor(leaf)}
        for tensor in tree_leaves(output):
            if (
                torch.is_tensor(tensor)
                and tensor.numel() >= self.size
                and tensor.untyped_storage().data_ptr() not in inputs
            ):
                self.count += 1
        return output


def test_correlation_backward_allocates_map_gradient_once():
    # Autograd's own per-chunk backward would allocate a map-sized gradient for every chunk.
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=6, seed=6)
    counts = {}
    for chunk_size in (1, 1000):
        fmap_leaf = fmap.clone().requires_grad_()
        gmap_leaf = gmap.clone().requires_grad_()
        pyramid = CorrelationPyramid.from_fmap(fmap_leaf, 2, 3)
        result = correlate(gmap_leaf, pyramid, coords.clone().requires_grad_(), kk, jj, chunk_size)
        counter = _NewMapSizedTensors(pyramid.levels[0].numel())
        with counter:
            result.sum().backward()
        counts[chunk_size] = counter.count
    assert counts[1000] >= 1
    assert counts[1] == counts[1000]


def test_correlation_bfloat16_gradients_close_to_float32():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=8)
    gradients = {}
    for dtype in (None, torch.bfloat16):
        inputs = [tensor.float().requires_grad_() for tensor in (gmap, fmap, coords)]
        pyramid = CorrelationPyramid.from_fmap(inputs[1], 2, 3, dtype=dtype)
        correlate(inputs[0], pyramid, inputs[2], kk, jj, 3).square().sum().backward()
        gradients[dtype] = [tensor.grad for tensor in inputs]
    for approximate, exact in zip(gradients[torch.bfloat16], gradients[None]):
        assert approximate.dtype == torch.float32
        assert torch.allclose(approximate, exact, atol=0.05 * exact.abs().max())


def test_correlation_bfloat16_maps_close_to_float32():
    gmap, fmap, coords, kk, jj = correlation_case(num_edges=8)
    gmap, fmap, coords = gmap.float(), fmap.float(), coords.float()
    exact = correlate(gmap, CorrelationPyramid.from_fmap(fmap, 2, 3), coords, kk, jj)
    pyramid = CorrelationPyramid.from_fmap(fmap, 2, 3, dtype=torch.bfloat16)
    approximate = correlate(gmap, pyramid, coords, kk, jj)
    assert approximate.dtype == torch.float32
    assert torch.allclose(approximate, exact, atol=0.05 * exact.abs().max())


def test_pyramid_write_matches_build():
    gmap, fmap, coords, kk, jj = correlation_case()
    built = CorrelationPyramid.from_fmap(fmap, 2, 3)
    filled = CorrelationPyramid.from_fmap(torch.zeros_like(fmap), 2, 3)
    for slot in range(fmap.shape[0]):
        filled.write(slot, fmap[slot])
    for target, source in zip(filled.levels, built.levels):
        assert torch.equal(target, source)


# --- update operator --------------------------------------------------------------------------


def test_temporal_neighbors_on_hand_made_edges():
    #            e: 0  1  2  3  4  5  6
    kk = torch.tensor([0, 0, 0, 1, 1, 2, 0])
    jj = torch.tensor([3, 1, 2, 2, 4, 0, 5])
    previous, following = temporal_neighbors(kk, jj)
    assert previous.tolist() == [2, -1, 1, -1, -1, -1, -1]
    assert following.tolist() == [-1, 2, 0, -1, -1, -1, -1]


def test_temporal_neighbors_empty():
    empty = torch.zeros(0, dtype=torch.long)
    previous, following = temporal_neighbors(empty, empty)
    assert previous.numel() == 0
    assert following.numel() == 0


def test_soft_aggregation_matches_group_loop():
    torch.manual_seed(0)
    dim = 5
    module = SoftAggregation(dim).double()
    x = torch.randn(12, dim, dtype=torch.float64)
    keys = torch.tensor([7, 3, 7, 7, 9, 3, 100, 9, 9, 7, 3, 42])
    result = module(x, keys)
    for key in keys.unique():
        members = keys == key
        weights = torch.softmax(module.g(x[members]), dim=0)
        pooled = (weights * module.f(x[members])).sum(dim=0)
        expected = module.h(pooled).expand(int(members.sum()), -1)
        assert torch.allclose(result[members], expected, atol=1e-12)


def test_scatter_softmax_gradient():
    x = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1])
    assert torch.autograd.gradcheck(lambda value: scatter_softmax(value, groups, 3), (x,))


def test_gradient_clamp_clips_and_zeroes_nan():
    x = torch.zeros(4, requires_grad=True)
    GradientClamp()(x).backward(torch.tensor([5.0, -5.0, 0.003, float("nan")]))
    assert x.grad.tolist() == pytest.approx([0.01, -0.01, 0.003, 0.0])


def test_update_gradients_reach_hidden_and_correlation(small_network):
    config = small_network.config
    hidden = torch.randn(6, config.context_dim, requires_grad=True)
    corr = torch.randn(6, 882, requires_grad=True)
    context = torch.randn(4, config.context_dim)
    ii = torch.tensor([0, 0, 1, 1, 0, 1])
    jj = torch.tensor([1, 2, 0, 2, 3, 3])
    kk = torch.tensor([0, 0, 2, 2, 1, 3])
    _, delta, weight = small_network.update(hidden, context, corr, ii, jj, kk)
    (delta.sum() + weight.sum()).backward()
    assert hidden.grad.abs().sum() > 0
    assert corr.grad.abs().sum() > 0


def test_update_runs_under_half_precision_autocast(small_network):
    """``mixed_precision`` runs the network under float16 autocast on CUDA; CPU autocast takes
    the same code path here. The soft aggregation used to add half-precision terms into a
    float32 sum, which raised in index_add."""
    config = small_network.config
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(6, config.context_dim, generator=generator)
    corr = torch.randn(6, 882, generator=generator)
    context = torch.randn(4, config.context_dim, generator=generator)
    ii = torch.tensor([0, 0, 1, 1, 0, 1])
    jj = torch.tensor([1, 2, 0, 2, 3, 3])
    kk = torch.tensor([0, 0, 2, 2, 1, 3])
    with torch.no_grad():
        _, delta, weight = small_network.update(hidden, context, corr, ii, jj, kk)
        with torch.autocast("cpu", dtype=torch.float16):
            _, half_delta, half_weight = small_network.update(hidden, context, corr, ii, jj, kk)
    assert half_delta.dtype == torch.float16
    torch.testing.assert_close(half_delta.float(), delta, atol=0.02, rtol=0.02)
    torch.testing.assert_close(half_weight.float(), weight, atol=0.01, rtol=0.0)


def test_update_rejects_short_context(small_network):
    dim = small_network.config.context_dim
    edges = torch.tensor([0, 5])
    with pytest.raises(IndexError, match="context"):
        small_network.update(
            torch.zeros(2, dim), torch.zeros(3, dim), torch.zeros(2, 882), edges, edges, edges
        )


# --- model files ------------------------------------------------------------------------------


def run_network(network):
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        batch = network.patchify(make_images(2), 6, generator)
        kk = torch.arange(12)
        jj = 1 - batch.frame_index
        coords = batch.patches[kk, :2] + 0.5
        corr = network.correlate(batch.gmap, batch.fmap, coords, kk, jj)
        hidden = torch.zeros(12, network.config.context_dim)
        return network.update(hidden, batch.context, corr, batch.frame_index, jj, kk)


def test_model_round_trip(tmp_path, small_network):
    config = load_engine_config("small")
    path = tmp_path / "models" / "vo_small.pt"
    save_model(path, small_network, config, {"steps": 10})
    loaded, loaded_config = load_model(path)
    assert loaded_config == config
    assert not loaded.training
    for before, after in zip(run_network(small_network), run_network(loaded)):
        assert torch.equal(before, after)
    payload = torch.load(path, weights_only=True)
    assert payload["metadata"] == {"steps": 10}
    assert payload["format_version"] == 1


def test_shipped_model_carries_the_small_preset():
    """The node tracks with the model file's settings, the runner with the preset's: they agree."""
    from vo_node.model.network import default_model_path

    _, shipped = load_model(default_model_path())
    assert shipped == load_engine_config("small")


def test_cpu_inference_copy_keeps_outputs(small_network):
    """The copy computes the same features, and the trained network keeps its layout."""
    inference = small_network.for_inference(torch.device("cpu"))
    assert inference is not small_network
    stem = inference.patchifier.matching_encoder.stem[0].weight
    assert stem.is_contiguous(memory_format=torch.channels_last)
    assert not stem.is_contiguous()
    assert small_network.patchifier.matching_encoder.stem[0].weight.is_contiguous()
    images = make_images(2)
    with torch.no_grad():
        batches = [
            network.patchify(images, 8, torch.Generator().manual_seed(3))
            for network in (small_network, inference)
        ]
    for name in ("fmap", "gmap", "context", "patches"):
        torch.testing.assert_close(
            getattr(batches[1], name).contiguous(), getattr(batches[0], name).contiguous(),
            rtol=1e-4, atol=1e-5,
        )


def test_load_rejects_mismatched_config(tmp_path, small_network):
    path = tmp_path / "model.pt"
    save_model(path, small_network, load_engine_config("small"), {})
    payload = torch.load(path, weights_only=True)
    payload["config"]["network"]["context_dim"] += 32
    torch.save(payload, path)
    stored = str(tuple(small_network.patchifier.context_encoder.projection.weight.shape))
    message = rf"context_encoder\.projection\.weight.*{re.escape(stored)}.*save the model again"
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_save_rejects_config_of_other_network(tmp_path, small_network):
    with pytest.raises(ValueError, match="network"):
        save_model(tmp_path / "model.pt", small_network, EngineConfig(), {})


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "absent.pt")
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not a model")
    with pytest.raises(ModelFileError, match="not a vo_node model"):
        load_model(text_file)
    other = tmp_path / "weights.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(ModelFileError, match="missing format_version"):
        load_model(other)


def test_load_error_is_short_and_names_fix(tmp_path, small_network):
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not a model")
    truncated = tmp_path / "truncated.pt"
    save_model(truncated, small_network, load_engine_config("small"), {})
    truncated.write_bytes(truncated.read_bytes()[:100_000])
    for path in (text_file, truncated):
        with pytest.raises(ModelFileError) as error:
            load_model(path)
        message = str(error.value)
        assert message.startswith(f"{path} is not a vo_node model file or is truncated")
        assert "python -m vo_node.train --export" in message
        # torch's advice to pass weights_only=False would load arbitrary code; it is left out.
        assert "weights_only" not in message
        assert "\n" not in message
        assert len(message) < 400


def test_load_rejects_folder(tmp_path):
    with pytest.raises(ModelFileError, match=f"model file {tmp_path} is a folder"):
        load_model(tmp_path)


def test_saved_config_is_plain_dict(tmp_path, small_network):
    config = load_engine_config("small")
    path = tmp_path / "model.pt"
    save_model(path, small_network, config, {})
    assert torch.load(path, weights_only=True)["config"] == to_dict(config)
    assert isinstance(config.network, NetworkConfig)


def test_encoder_norm_equals_instance_norm():
    from vo_node.model.encoder import _norm_layer

    x = torch.randn(2, 8, 12, 20, dtype=torch.float64)
    expected = torch.nn.functional.instance_norm(x)
    assert torch.allclose(_norm_layer(8, normalize=True)(x), expected, atol=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_encoder_channels_last_matches_contiguous(dtype, tolerance):
    from vo_node.model.encoder import OUTPUT_SCALE, Encoder

    torch.manual_seed(0)
    encoder = Encoder(output_dim=16, encoder_dim=8, normalize=True).to(dtype).eval()
    images = torch.rand(1, 3, 48, 64, dtype=dtype) * 2.0 - 0.5
    with torch.no_grad():
        result = encoder(images)
        stages = encoder.stage2(encoder.stage1(encoder.stem(images.contiguous())))
        expected = encoder.projection(stages) * OUTPUT_SCALE
    assert result.is_contiguous(memory_format=torch.channels_last)
    assert expected.is_contiguous()
    assert expected.abs().max() > 0.1
    assert torch.allclose(result, expected, atol=tolerance, rtol=0)


@pytest.mark.parametrize(
    "dtype, offset, tolerance",
    [(torch.float64, 1.5, 1e-12), (torch.float32, 1.5, 1e-5), (torch.float32, 40.0, 2e-5)],
)
def test_channels_last_instance_norm_matches_reference(dtype, offset, tolerance):
    from vo_node.model.encoder import channels_last_instance_norm

    generator = torch.Generator().manual_seed(3)
    # offset 40 puts each channel's mean 20 standard deviations from zero, as on plain images.
    x = torch.randn(2, 12, 30, 46, generator=generator, dtype=torch.float64) * 2.0 + offset
    expected = torch.nn.functional.instance_norm(x, eps=1e-5).to(dtype)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    result = channels_last_instance_norm(x, eps=1e-5)
    assert result.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(result, expected, atol=tolerance, rtol=0)


def test_channels_last_instance_norm_rejects_bad_shapes():
    from vo_node.model.encoder import channels_last_instance_norm

    with pytest.raises(ValueError, match="non-empty"):
        channels_last_instance_norm(torch.zeros(0, 4, 3, 3), eps=1e-5)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        channels_last_instance_norm(torch.zeros(4, 3, 3), eps=1e-5)


def test_instance_norm_half_precision_uses_group_norm():
    from vo_node.model.encoder import InstanceNorm

    x = (torch.randn(1, 16, 60, 92) * 2.0 + 3.0).contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.instance_norm(x.contiguous())
    with torch.no_grad():
        result = InstanceNorm(16)(x.half()).float()
    assert torch.isfinite(result).all()
    assert torch.allclose(result, expected, atol=2e-2, rtol=0)


def test_instance_norm_paths_by_layout_and_grad():
    from vo_node.model.encoder import InstanceNorm

    norm = InstanceNorm(12)
    x = torch.randn(1, 12, 10, 14, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.instance_norm(x.contiguous())
    with torch.no_grad():
        fast = norm(x)
    leaf = x.clone().requires_grad_()
    recorded = norm(leaf)
    recorded.square().sum().backward()
    assert torch.allclose(fast, expected, atol=1e-12)
    assert torch.allclose(recorded, expected, atol=1e-12)
    assert leaf.grad is not None
    assert torch.isfinite(leaf.grad).all()
    assert norm.state_dict() == {}
