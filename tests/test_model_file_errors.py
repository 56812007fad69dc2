"""Unreadable model files: every one is a ModelFileError that names the file and the fix.

torch's weights-only unpickler fails on foreign bytes with many error types (KeyError for
"hello", IndexError for "this is not a model file"), so these tests feed text, empty, truncated
and random files to ``load_model`` and to the commands that take a model or checkpoint file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vo_node.model.network import ModelFileError, load_model

REPO = Path(__file__).resolve().parents[1]
EXPORT_COMMAND = "python -m vo_node.train --export"
RANDOM_FILES = 40
RANDOM_SEED = 0
MAX_MESSAGE_CHARS = 500
COMMAND_TIMEOUT_S = 120
PICKLE_PROTOCOL_2 = b"\x80\x02"
ZIP_HEADER = b"PK\x03\x04"


def check_message(error: ModelFileError, path: Path) -> None:
    message = str(error)
    assert str(path) in message
    assert "A model file (network weights and engine configuration) is made from" in message
    assert EXPORT_COMMAND in message
    # torch's advice to pass weights_only=False would load arbitrary code; it is left out.
    assert "weights_only" not in message
    assert "\n" not in message
    assert len(message) < MAX_MESSAGE_CHARS


@pytest.mark.parametrize("content", [
    "hello",
    "this is not a model file",
    "not a model",
    "<?xml version=\"1.0\"?>\n<package format=\"3\"></package>\n",
    "1234",
    "{}",
])
def test_text_file_is_model_file_error(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_text(content)
    with pytest.raises(ModelFileError) as error:
        load_model(path)
    check_message(error.value, path)
    assert str(error.value).startswith(f"{path} is not a vo_node model file or is truncated")


def test_empty_file_is_model_file_error(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match=f"model file {path} is empty") as error:
        load_model(path)
    check_message(error.value, path)


def test_random_bytes_are_model_file_errors(tmp_path):
    generator = np.random.default_rng(RANDOM_SEED)
    path = tmp_path / "random.pt"
    prefixes = [b"", PICKLE_PROTOCOL_2, ZIP_HEADER]
    for index in range(RANDOM_FILES):
        size = int(generator.integers(1, 300))
        body = generator.integers(0, 256, size=size, dtype=np.uint8).tobytes()
        path.write_bytes(prefixes[index % len(prefixes)] + body)
        with pytest.raises(ModelFileError) as error:
            load_model(path)
        check_message(error.value, path)


def test_foreign_torch_file_names_missing_keys(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(ModelFileError, match="missing format_version") as error:
        load_model(path)
    check_message(error.value, path)


@pytest.fixture
def text_model(tmp_path) -> Path:
    path = tmp_path / "notes.pt"
    path.write_text("this is not a model file")
    return path


def run_command(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S)


def test_run_command_rejects_text_model(text_model, tmp_path):
    from vo_node.demo_data import render_demo_sequence

    sequence = render_demo_sequence(tmp_path / "sequence", num_frames=3, height=32, width=48)
    completed = run_command(["vo_node.run", str(sequence), "--model", str(text_model),
                             "--output", str(tmp_path / "out"), "--no-progress"])
    assert completed.returncode == 2, completed.stderr
    assert f"{text_model} is not a vo_node model file" in completed.stderr
    assert EXPORT_COMMAND in completed.stderr
    assert "Traceback" not in completed.stderr


def test_demo_offline_rejects_text_model(text_model, tmp_path):
    from vo_node.demo_data import render_demo_sequence

    sequence = render_demo_sequence(tmp_path / "sequence", num_frames=3, height=32, width=48)
    completed = run_command(["vo_node.demo", str(sequence), "--offline", "--model",
                             str(text_model), "--output", str(tmp_path / "out")])
    assert completed.returncode == 2, completed.stderr
    assert f"{text_model} is not a vo_node model file" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_export_rejects_text_checkpoint(text_model, tmp_path):
    output = tmp_path / "model.pt"
    completed = run_command(["vo_node.train", "--export", str(text_model), "--output",
                             str(output)])
    assert completed.returncode == 2, completed.stderr
    assert f"checkpoint {text_model} could not be read (IndexError" in completed.stderr
    assert "it is not a training checkpoint or it is truncated" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not output.exists()
