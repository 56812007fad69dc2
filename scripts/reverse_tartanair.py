"""Write a TartanAir sequence played backwards, as a folder of links, to track it in reverse.

Frame ``k`` of the output is frame ``N - 1 - k`` of the input: the images and depth maps are
symbolic links to the input files under their new numbers, ``pose_left.txt`` has its lines in
reverse order and ``camera_info_left.yaml`` is copied. The scene is static, so the reversed
folder is a valid sequence whose camera moves the other way. Tracking both shows whether an
error depends on the direction of motion::

    .venv/bin/python scripts/reverse_tartanair.py ../shared/data/tartanair_hospital /tmp/ta_reversed
    .venv/bin/python -m vo_node.accuracy /tmp/ta_reversed --runs 5

The output folder must not exist yet, so no earlier output is overwritten.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
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
        raise ValueError(f"{path} is not named NNNNNN{suffix}; rename it or move it out")
    return int(stem)


def reversed_links(files: list[Path], suffix: str, count: int) -> dict[str, Path]:
    """Return ``{new name: source file}`` with frame ``k`` renamed to ``count - 1 - k``.

    Raises:
        ValueError: a name is not ``NNNNNN<suffix>`` or its number lies outside 0 .. count - 1.
    """
    links = {}
    for path in files:
        number = frame_number(path, suffix)
        if not 0 <= number < count:
            raise ValueError(
                f"{path} has frame number {number}, outside 0..{count - 1} of the {count} "
                "images; number the frames from 0 without gaps"
            )
        links[f"{count - 1 - number:06d}{suffix}"] = path.resolve()
    return links


def reverse_sequence(source: Path, output: Path) -> int:
    """Write the reversed sequence of ``source`` to the new folder ``output``; return its frame
    count. Every name is checked before anything is written, and the folder is assembled under
    a temporary name, so a failure leaves no ``output`` behind.

    Raises:
        FileNotFoundError: ``source`` or one of its TartanAir files or folders is missing.
        FileExistsError: ``output`` exists.
        ValueError: a badly named or numbered frame, or image and pose counts that differ.
    """
    if not source.is_dir():
        raise FileNotFoundError(f"source folder {source} not found; give a TartanAir sequence folder")
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
    if output.exists() or output.is_symlink():
        raise FileExistsError(f"{output} exists; give a new folder or remove it first")
    image_links = reversed_links(images, IMAGE_SUFFIX, len(images))
    if len(image_links) != len(images):
        raise ValueError(f"{source / IMAGE_FOLDER} repeats a frame number; give each image its own")
    depths = sorted((source / DEPTH_FOLDER).glob(f"*{DEPTH_SUFFIX}"))
    depth_links = reversed_links(depths, DEPTH_SUFFIX, len(images))
    if len(depth_links) != len(depths):
        raise ValueError(f"{source / DEPTH_FOLDER} repeats a frame number; give each depth map its own")

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        write_links(staging / IMAGE_FOLDER, image_links)
        if depth_links:
            write_links(staging / DEPTH_FOLDER, depth_links)
        (staging / POSE_FILE).write_text("\n".join(reversed(poses)) + "\n")
        if (source / CAMERA_FILE).is_file():
            shutil.copyfile(source / CAMERA_FILE, staging / CAMERA_FILE)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(images)


def write_links(folder: Path, links: dict[str, Path]) -> None:
    """Create ``folder`` with one symbolic link per ``{name: target}``."""
    folder.mkdir()
    for name, target in links.items():
        (folder / name).symlink_to(target)


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
