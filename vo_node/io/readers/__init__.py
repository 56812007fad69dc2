"""One :class:`~vo_node.io.sequence.Sequence` reader per dataset layout, and layout detection."""

from __future__ import annotations

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
    "reader_classes",
]


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
