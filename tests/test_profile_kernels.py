"""scripts/profile_kernels.py on the rendered demo sequence, with few repetitions."""

import re

import pytest

from tests.conftest import SCRIPTS_DIR, load_module_from_file
from vo_node.demo_data import render_demo_sequence


@pytest.fixture(scope="module")
def profile_kernels():
    return load_module_from_file(SCRIPTS_DIR / "profile_kernels.py", "profile_kernels")


def numbers(line: str) -> list[float]:
    return [float(value) for value in re.findall(r"\d+\.\d+(?:e[-+]\d+)?", line)]


def test_profile_kernels_prints_every_step(profile_kernels, tmp_path, capsys):
    sequence = render_demo_sequence(tmp_path / "sequence", num_frames=16, height=96, width=128)
    argv = [str(sequence), "--frames", "16", "--calls", "3", "--repetitions", "2", "--threads", "1"]

    status = profile_kernels.main(argv)

    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    assert len(lines) == len(profile_kernels.STEPS)
    assert lines[0].startswith("amin int64")
    assert lines[4].startswith("correlation: median")
    assert lines[5].startswith("matching encoder")
    assert lines[6].startswith("store rows")
    assert lines[7].startswith("overhead:")
    for line in lines:
        assert numbers(line), line
        assert all(value >= 0 for value in numbers(line)), line
    centred_error = numbers(lines[2])[-1]
    assert centred_error < 1e-4


def test_profile_kernels_rejects_missing_sequence(profile_kernels, tmp_path, capsys):
    status = profile_kernels.main([str(tmp_path / "missing"), "--steps", "correlation"])

    assert status == 2
    assert "not found" in capsys.readouterr().err
