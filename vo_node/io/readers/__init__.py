"""One :class:`~vo_node.io.sequence.Sequence` reader per dataset layout, and layout detection."""

from __future__ import annotations

import logging
from pathlib import Path

from vo_node.io.readers.euroc import EurocSequence
from vo_node.io.readers.folder import ImageFolderSequence
from vo_node.io.readers.kitti import KittiSequence
from vo_node.io.readers.tartanair import TartanAirSequence
from vo_node.io.readers.tum import TumSequence
from vo_node.io.readers.video import VideoSequence
from vo_node.io.sequence import SequenceError

__all__ = [
    "EurocSequence",
    "ImageFolderSequence",
    "KittiSequence",
    "TartanAirSequence",
    "TumSequence",
    "VideoSequence",
    "detect_reader",
    "find_nested_sequences",
    "reader_classes",
    "resolve_sequence_path",
]

logger = logging.getLogger(__name__)

NESTED_SEARCH_DEPTH = 2
"""Folder levels below a dataset root that :func:`find_nested_sequences` searches, enough for
KITTI's ``sequences/XX`` and a folder of bags."""
MAX_LISTED_SEQUENCES = 10
"""Sequences named in the error for a dataset root that contains several."""


def reader_classes() -> list[type]:
    """Return the reader classes in detection order (most specific layout first)."""
    from vo_node.io.bag import BagSequence

    return [
        BagSequence,
        EurocSequence,
        KittiSequence,
        TartanAirSequence,
        TumSequence,
        VideoSequence,
        ImageFolderSequence,
    ]


def detect_reader(path: Path) -> type:
    """Return the reader class whose layout matches ``path``.

    Raises:
        SequenceError: ``path`` is an empty folder or matches no layout; the message lists the
            supported layouts.
    """
    classes = reader_classes()
    for reader in classes:
        if reader.detect(path):
            return reader
    layouts = "\n".join(f"  - {reader.DESCRIPTION}" for reader in classes)
    if path.is_dir() and not any(path.iterdir()):
        problem = f"sequence folder {path} is empty"
    else:
        problem = f"{path} matches no supported sequence layout"
    raise SequenceError(f"{problem}; supported layouts:\n{layouts}")


def find_nested_sequences(path: Path) -> list[tuple[Path, type]]:
    """Find the sequences up to two folder levels below ``path`` as ``(folder, reader)`` pairs.

    Only layouts with their own structure count (bags, EuRoC, KITTI, TartanAir, TUM RGB-D). A
    plain image folder or a video below ``path`` is no sequence here, because datasets keep their
    images in such folders. The search does not descend into a folder that is a sequence, nor
    into hidden folders.
    """
    readers = [r for r in reader_classes() if r not in (ImageFolderSequence, VideoSequence)]
    found: list[tuple[Path, type]] = []
    level = [path]
    for _ in range(NESTED_SEARCH_DEPTH):
        below: list[Path] = []
        for folder in level:
            try:
                children = sorted(folder.iterdir())
            except OSError as error:  # an unreadable folder cannot contain a sequence we could open
                logger.debug("skipping %s: %s", folder, error)
                continue
            for child in children:
                if not child.is_dir() or child.name.startswith("."):
                    continue
                reader = next((r for r in readers if r.detect(child)), None)
                if reader is not None:
                    found.append((child, reader))
                else:
                    below.append(child)
        level = below
    return found


def resolve_sequence_path(path: Path) -> Path:
    """Return ``path``, or the only sequence below it when ``path`` is a dataset root.

    A dataset root is a folder that matches no layout itself, such as a KITTI odometry folder
    with ``sequences/07`` inside it.

    Raises:
        SequenceError: the folder contains several sequences; the message lists them.
    """
    if not path.is_dir() or any(reader.detect(path) for reader in reader_classes()):
        return path
    found = find_nested_sequences(path)
    if len(found) == 1:
        folder, reader = found[0]
        logger.info("%s contains one %s sequence; opening %s", path, reader.layout, folder)
        return folder
    if len(found) > 1:
        listed = "\n".join(
            f"  - {folder} ({reader.layout})" for folder, reader in found[:MAX_LISTED_SEQUENCES]
        )
        more = len(found) - MAX_LISTED_SEQUENCES
        if more > 0:
            listed += f"\n  - ... and {more} more"
        raise SequenceError(
            f"{path} contains {len(found)} sequences; pass one of them as the path:\n{listed}"
        )
    return path
