"""Time the CPU kernels behind the correlation, encoder and image-preparation speed-ups.

Prints one line per measurement (medians over repetitions):

1. ``amin`` against ``amax`` over an int64 ``(E, 9, 2)`` tensor, as in the correlation's level
   planning, and ``amin`` over the same values as float32;
2. ``group_norm`` on a channels-last and on a contiguous 1x12x120x184 map, and the engine's
   ``channels_last_instance_norm`` on the channels-last one;
3. the largest error against a float64 reference of ``E[x^2] - E[x]^2`` and of the engine's
   centred variance, on float32 maps whose channel means lie 20 standard deviations from zero;
4. replicating a 480x752 grey frame to three channels with ``np.repeat``, and ``prepare_image``
   of that grey frame at width 376;
5. the correlation: the inputs of the last ``--calls`` calls while tracking ``--frames`` frames
   of the sequence with ``--config``, then the median time per call over those inputs;
6. the largest difference of the matching encoder's output between the channels-last
   normalisation and ``group_norm``, on the first frames of the sequence;
7. removing an eighth of the rows of a correlation grid-product store sized for ``accurate``
   on EuRoC, with ``index_select`` into a preallocated buffer and with boolean indexing;
8. per-frame overheads: ``sum(dim=1)`` against adding the two rows of ``(E, 2, 6)`` BA terms,
   ``torch.broadcast_shapes`` on two equal shapes, the correlation blend with a copy into the
   output against writing there (``out=``), and how many keyframe flows the square root of
   summed squares gives differently from ``norm``.

With ``PYTHONPATH=CHECKOUT --steps correlation`` it times another version's correlation on
that version's own tracking of the same frames. The other steps need this version's encoder.
For example::

    .venv/bin/python scripts/profile_kernels.py ../shared/data/euroc_MH_05_difficult --threads 2

Step 5 wraps ``vo_node.model.network.correlate`` to record its inputs, and step 6 replaces
``vo_node.model.encoder._is_channels_last`` while it runs; neither changes a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEQUENCE = REPO_ROOT.parent / "shared" / "data" / "euroc_MH_05_difficult"
EDGES = 3600
"""Edges of a typical ``accurate`` frame on EuRoC (3264-4032 measured)."""
MAP_SHAPE = (1, 12, 120, 184)
"""The matching encoder's first maps for a 240x368 input."""
MEAN_IN_DEVIATIONS = 20.0
STORE_ROW_SHAPE = (2, 9, 8, 8)
"""Levels, patch pixels and grid side of one store row (radius 3, 3x3 patches)."""
BA_EDGES = 3648
"""Edges of an ``accurate`` BA problem on EuRoC."""
FLOW_SHAPE = (4000, 2, 3, 3)
"""Pixel displacements ``(2 * patches, 2, P, P)`` of the keyframe test, enlarged for the count."""
STEPS = (
    "reductions", "normalisation", "variance", "grey", "correlation", "encoder", "store",
    "overhead",
)


def median_milliseconds(function: Callable[[], object], repetitions: int) -> float:
    """Return the median wall time of ``function()`` in milliseconds after one warm-up call."""
    function()
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def time_reductions(repetitions: int) -> None:
    corners = (torch.rand(EDGES, 2, 9) * 90).floor().transpose(1, 2)  # (E, 9, 2) as in planning
    integers = corners.long()
    print(
        f"amin int64 {median_milliseconds(lambda: integers.amin(dim=1), repetitions):.3f} ms, "
        f"amax int64 {median_milliseconds(lambda: integers.amax(dim=1), repetitions):.3f} ms, "
        f"amin float32 {median_milliseconds(lambda: corners.amin(dim=1), repetitions):.3f} ms"
    )


def time_normalisation(repetitions: int) -> None:
    from vo_node.model.encoder import channels_last_instance_norm

    channels = MAP_SHAPE[1]
    contiguous = torch.randn(MAP_SHAPE)
    channels_last = contiguous.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        group_last = median_milliseconds(
            lambda: F.group_norm(channels_last, channels), repetitions
        )
        group_contiguous = median_milliseconds(
            lambda: F.group_norm(contiguous, channels), repetitions
        )
        engine = median_milliseconds(
            lambda: channels_last_instance_norm(channels_last, 1e-5), repetitions
        )
    print(
        f"group_norm channels-last {group_last:.3f} ms, contiguous {group_contiguous:.3f} ms, "
        f"channels_last_instance_norm {engine:.3f} ms"
    )


def variance_errors() -> None:
    from vo_node.model.encoder import channels_last_instance_norm

    reference_input = torch.randn(MAP_SHAPE, dtype=torch.float64) + MEAN_IN_DEVIATIONS
    reference = F.instance_norm(reference_input, eps=1e-5)
    x = reference_input.float().contiguous(memory_format=torch.channels_last)
    mean = x.mean(dim=(2, 3), keepdim=True)
    variance = (x.square().mean(dim=(2, 3), keepdim=True) - mean.square()).clamp_min(0.0)
    one_pass = (x - mean) * torch.rsqrt(variance + 1e-5)
    centred = channels_last_instance_norm(x, 1e-5)
    print(
        f"means at {MEAN_IN_DEVIATIONS:g} deviations: E[x^2]-E[x]^2 error "
        f"{float((one_pass.double() - reference).abs().max()):.1e}, centred error "
        f"{float((centred.double() - reference).abs().max()):.1e}"
    )


def time_grey_preparation(repetitions: int) -> None:
    from vo_node.odometry.image import prepare_image

    grey = np.random.default_rng(0).integers(0, 256, (480, 752), dtype=np.uint8)
    intrinsics = [458.0, 457.0, 367.0, 248.0]
    repeat = median_milliseconds(lambda: np.repeat(grey[:, :, None], 3, axis=2), repetitions)
    prepare = median_milliseconds(lambda: prepare_image(grey, intrinsics, 376), repetitions)
    print(f"np.repeat to 3 channels {repeat:.3f} ms, prepare_image of the grey frame {prepare:.3f} ms")


def time_store_removal(repetitions: int) -> None:
    products = torch.randn(EDGES, *STORE_ROW_SHAPE)
    keep = torch.arange(EDGES) % 8 != 0
    rows = keep.nonzero().squeeze(1)
    spare = torch.empty_like(products)
    selected = median_milliseconds(
        lambda: torch.index_select(products, 0, rows, out=spare[: rows.numel()]), repetitions
    )
    masked = median_milliseconds(lambda: products[keep], repetitions)
    print(f"store rows: index_select into a buffer {selected:.3f} ms, boolean indexing "
          f"{masked:.3f} ms ({EDGES} rows)")


def time_overheads(repetitions: int) -> None:
    from vo_node.model.correlation import _bilinear_blend

    terms = torch.randn(BA_EDGES, 2, 6)
    summed = median_milliseconds(lambda: terms.sum(dim=1), repetitions)
    added = median_milliseconds(lambda: terms[:, 0] + terms[:, 1], repetitions)
    shape = torch.Size([40])
    broadcast = median_milliseconds(lambda: torch.broadcast_shapes(shape, shape), repetitions)

    products = torch.randn(EDGES, *STORE_ROW_SHAPE[1:])
    coords = torch.rand(EDGES, STORE_ROW_SHAPE[1], 2) * 50.0
    output = torch.zeros(EDGES, 2, STORE_ROW_SHAPE[1], (STORE_ROW_SHAPE[2] - 1) ** 2)
    level = output[:, 0]
    copied = median_milliseconds(
        lambda: level.copy_(_bilinear_blend(products, coords).flatten(2)), repetitions
    )
    blended = level.view(EDGES, STORE_ROW_SHAPE[1], STORE_ROW_SHAPE[2] - 1, -1)
    written = median_milliseconds(lambda: _bilinear_blend(products, coords, out=blended), repetitions)

    displacement = torch.randn(FLOW_SHAPE, generator=torch.Generator().manual_seed(0)) * 5.0
    by_norm = displacement.norm(dim=1)
    by_squares = displacement.square().sum(dim=1).sqrt()
    differ = int((by_norm != by_squares).sum())
    spacing = torch.finfo(by_norm.dtype).eps * by_norm.abs().clamp_min(1e-30)
    largest_units = float(((by_norm - by_squares).abs() / spacing).max())
    print(
        f"overhead: sum(dim=1) {summed:.3f} ms, row addition {added:.3f} ms ({BA_EDGES} edges); "
        f"broadcast_shapes {1000 * broadcast:.1f} us; blend with copy {copied:.3f} ms, "
        f"out= {written:.3f} ms ({EDGES} edges, one level); square root of squares differs "
        f"from norm in {differ} of {by_norm.numel()} flows, by at most {largest_units:.1f} "
        "units of float32 eps relative to the flow"
    )


def engine_parts(sequence_path: Path, config_name: str, frames: int):
    """Return the engine configuration, network and the first ``frames`` frames with intrinsics."""
    from vo_node.config import load_engine_config
    from vo_node.io.sequence import open_sequence
    from vo_node.model.network import default_model_path, load_model

    network, model_config = load_model(default_model_path(), "cpu")
    config = dataclasses.replace(
        load_engine_config(config_name), device="cpu", network=model_config.network
    ).validate()
    sequence = open_sequence(sequence_path, 1, frames)
    images = [(frame.image, frame.timestamp_ns) for frame in sequence]
    return config, network, images, sequence.camera.intrinsics


def time_correlation(parts, calls: int, repetitions: int) -> None:
    from vo_node.model import network as network_module
    from vo_node.model.correlation import CorrelationPyramid, correlate
    from vo_node.odometry import VisualOdometry

    config, network, images, intrinsics = parts
    captured: list[tuple] = []

    def recording_correlate(gmap, pyramid, coords, kk, jj, *args, **kwargs):
        levels = [level.clone() for level in pyramid.levels]
        captured.append((gmap.clone(), levels, pyramid.windows, pyramid.radius, coords.clone(),
                         kk.clone(), jj.clone()))
        del captured[:-calls]
        return correlate(gmap, pyramid, coords, kk, jj, *args, **kwargs)

    network_module.correlate = recording_correlate
    try:
        odometry = VisualOdometry(config, network, "cpu")
        for image, timestamp_ns in images:
            odometry.track(image, timestamp_ns, intrinsics)
    finally:
        network_module.correlate = correlate
    if not captured:
        print(f"correlation: no calls while tracking {len(images)} frames; pass more --frames")
        return
    per_call = []
    with torch.inference_mode():
        for gmap, levels, windows, radius, coords, kk, jj in captured:
            pyramid = CorrelationPyramid(levels, windows, radius)
            per_call.append(
                median_milliseconds(lambda: correlate(gmap, pyramid, coords, kk, jj), repetitions)
            )
    edges = [entry[5].shape[0] for entry in captured]
    print(
        f"correlation: median {statistics.median(per_call):.2f} ms per call over {len(captured)} "
        f"calls of {min(edges)}-{max(edges)} edges"
    )


def encoder_difference(parts) -> None:
    from vo_node.model import encoder as encoder_module
    from vo_node.odometry.image import prepare_image

    config, network, images, intrinsics = parts
    matching = network.for_inference(torch.device("cpu")).patchifier.matching_encoder
    largest = 0.0
    keep = encoder_module._is_channels_last
    with torch.inference_mode():
        for image, _ in images[:5]:
            tensor, _ = prepare_image(image, intrinsics, config.max_image_width)
            inputs = encoder_module.normalize_images(tensor[None])
            fast = matching(inputs)
            encoder_module._is_channels_last = lambda x: False
            try:
                grouped = matching(inputs)
            finally:
                encoder_module._is_channels_last = keep
            largest = max(largest, float((fast - grouped).abs().max()))
    print(f"matching encoder: largest difference to group_norm {largest:.1e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sequence", nargs="?", type=Path, default=DEFAULT_SEQUENCE,
                        help="sequence for steps 5 and 6 (default: EuRoC MH_05 in ../shared/data)")
    parser.add_argument("--config", default="accurate", help="engine preset (default: accurate)")
    parser.add_argument("--frames", type=int, default=80, help="frames to track (default 80)")
    parser.add_argument("--calls", type=int, default=30,
                        help="correlation calls to time, the last ones (default 30)")
    parser.add_argument("--repetitions", type=int, default=50,
                        help="timed repetitions per kernel (default 50)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                        help="measurements to run (default: all)")
    args = parser.parse_args(argv)
    steps = set(args.steps)
    needs_sequence = bool(steps & {"correlation", "encoder"})
    if needs_sequence and not args.sequence.is_dir():
        print(f"sequence {args.sequence} not found; pass a sequence folder", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    if "reductions" in steps:
        time_reductions(args.repetitions)
    if "normalisation" in steps:
        time_normalisation(args.repetitions)
    if "variance" in steps:
        variance_errors()
    if "grey" in steps:
        time_grey_preparation(args.repetitions)
    if needs_sequence:
        parts = engine_parts(args.sequence, args.config, args.frames)
        if "correlation" in steps:
            time_correlation(parts, args.calls, max(1, args.repetitions // 10))
        if "encoder" in steps:
            encoder_difference(parts)
    if "store" in steps:
        time_store_removal(args.repetitions)
    if "overhead" in steps:
        time_overheads(args.repetitions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
