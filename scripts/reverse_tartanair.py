"""Write a TartanAir sequence played backwards, as a folder of links, to track it in reverse.

Frame ``k`` of the output is frame ``N - 1 - k`` of the input: the images and depth maps are
symbolic links to the input files under their new numbers, ``pose_left.txt`` has its lines in
reverse order and ``camera_info_left.yaml`` is copied. The scene is static, so the reversed
folder is a valid sequence whose camera moves the other way. Tracking both tells whether an
error depends on the direction of motion::

    .venv/bin/python scripts/reverse_tartanair.py ../shared/data/tartanair_hospital /tmp/ta_reversed
    .venv/bin/python -m vo_node.accuracy /tmp/ta_reversed --runs 5

The output folder must not exist yet, so no earlier output is overwritten.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

IMAGE_FOLDER = "image_left"
DEPTH_FOLDER = "depth_left"
POSE_FILE = "pose_left.txt"
CAMERA_FILE = "camera_info_left.yaml"
IMAGE_SUFFIX = "_left.png"
DEPTH_SUFFIX = "_left_depth.npy"


def frame_number(path: Path, suffix: str) -> int:
    """Return the frame number of ``NNNNNN<suffix>``; raise ValueError for another name."""
    stem = path.name[: -len(suffix)]
    if not path.name.endswith(suffix) or not stem.isdigit():
        raise ValueError(f"{path} is not named NNNNNN{suffix}")
    return int(stem)


def reverse_sequence(source: Path, output: Path) -> int:
    """Write the reversed sequence of ``source`` to the new folder ``output``; return its frame
    count.

    Raises:
        FileNotFoundError: a TartanAir file or folder is missing in ``source``.
        FileExistsError: ``output`` exists.
        ValueError: the image and pose counts differ.
    """
    images = sorted((source / IMAGE_FOLDER).glob(f"*{IMAGE_SUFFIX}"))
    pose_file = source / POSE_FILE
    if not images or not pose_file.is_file():
        raise FileNotFoundError(
            f"{source} is not a TartanAir sequence: it needs {IMAGE_FOLDER}/NNNNNN{IMAGE_SUFFIX} "
            f"images and {POSE_FILE}"
        )
    poses = [line for line in pose_file.read_text().splitlines() if line.strip()]
    if len(poses) != len(images):
        raise ValueError(
            f"{pose_file} has {len(poses)} poses for {len(images)} images; give one pose per image"
        )
    if output.exists():
        raise FileExistsError(f"{output} exists; give a new folder or remove it first")
    last = len(images) - 1
    output.mkdir(parents=True)
    (output / IMAGE_FOLDER).mkdir()
    for image in images:
        number = last - frame_number(image, IMAGE_SUFFIX)
        (output / IMAGE_FOLDER / f"{number:06d}{IMAGE_SUFFIX}").symlink_to(image.resolve())
    depths = sorted((source / DEPTH_FOLDER).glob(f"*{DEPTH_SUFFIX}"))
    if depths:
        (output / DEPTH_FOLDER).mkdir()
    for depth in depths:
        number = last - frame_number(depth, DEPTH_SUFFIX)
        (output / DEPTH_FOLDER / f"{number:06d}{DEPTH_SUFFIX}").symlink_to(depth.resolve())
    (output / POSE_FILE).write_text("\n".join(reversed(poses)) + "\n")
    if (source / CAMERA_FILE).is_file():
        shutil.copyfile(source / CAMERA_FILE, output / CAMERA_FILE)
    return len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="TartanAir sequence folder")
    parser.add_argument("output", type=Path, help="new folder for the reversed sequence")
    args = parser.parse_args()
    try:
        count = reverse_sequence(args.source, args.output)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {count} frames of {args.source} in reverse order to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
