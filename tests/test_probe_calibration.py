"""Motion-probe calibration on synthetic clips: the command runs, and its figures are sound."""

import csv

import pytest

from vo_node.evaluation import probe


def test_threshold_accuracy_counts_each_class():
    samples = [
        probe.ProbeSample(0, 0, 0.0, 0.2),
        probe.ProbeSample(0, 1, 1.0, 0.9),  # below the moving flow: a static pair
        probe.ProbeSample(0, 2, 5.0, 1.6),
        probe.ProbeSample(0, 3, 50.0, 0.8),
    ]
    rows = probe.threshold_accuracy(samples, [0.5, 1.0], moving_flow=2.0)
    assert rows[0] == (0.5, 0.5, 1.0)
    assert rows[1] == (1.0, 1.0, 0.5)


def test_probe_command_writes_samples(tmp_path, tiny_model, capsys):
    output = tmp_path / "probe"
    code = probe.main(
        ["--model", str(tiny_model), "--clips", "1", "--threads", "1", "--output", str(output)]
    )
    assert code == 0
    with open(output / "samples.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 + len(probe.FRAME_GAPS)
    assert [int(row["gap"]) for row in rows] == [0, *probe.FRAME_GAPS]
    assert float(rows[0]["true_flow"]) == 0.0
    true_flows = [float(row["true_flow"]) for row in rows[1:]]
    assert all(0.0 < flow < float("inf") for flow in true_flows)
    assert all(float(row["probe_flow"]) >= 0.0 for row in rows)
    assert (output / "probe.png").stat().st_size > 1000
    assert "threshold" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--clips", "0"], "--clips must be at least 1, got 0"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--moving-flow", "-3"], "--moving-flow must be positive, got -3.0"),
        (["--model", "missing.pt"], "model file missing.pt not found"),
        (["--config", "nosuch"], "nosuch"),
    ],
)
def test_probe_command_rejects_bad_arguments(arguments, message, capsys):
    assert probe.main(arguments) == 2
    assert message in capsys.readouterr().err
