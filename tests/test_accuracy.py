"""The accuracy command: table formatting and argument errors (tracking itself is tested elsewhere)."""

import pytest

from vo_node.accuracy import EXIT_USAGE, format_table, main


def test_table_reports_median_and_range():
    rows = [
        {"sequence": "/data/seq_a", "runs": 3, "evaluated_runs": 3, "ate": [0.3, 0.1, 0.2],
         "ate_percent": [3.0, 1.0, 2.0], "median_ate": 0.2, "median_ate_percent": 2.0,
         "standstill_ate_percent": 29.5, "median_fps": 12.5},
        {"sequence": "/data/seq_b", "runs": 3, "evaluated_runs": 0, "ate": [], "ate_percent": [],
         "median_ate": None, "median_ate_percent": None, "median_fps": 9.0},
    ]
    lines = format_table(rows).splitlines()
    assert lines[2] == "| seq_a | 3/3 | 0.200 | 0.100-0.300 | 2.00 | 29.50 | 12.5 |"
    assert lines[3] == "| seq_b | 0/3 | not computed | not computed | not computed | not computed | 9.0 |"


def test_missing_sequence_is_usage_error(tmp_path, capsys):
    status = main([str(tmp_path / "absent"), "--runs", "1"])
    assert status == EXIT_USAGE
    assert "sequence not found" in capsys.readouterr().err


def test_runs_below_one_rejected(tmp_path, capsys):
    assert main([str(tmp_path), "--runs", "0"]) == EXIT_USAGE
    assert "--runs must be at least 1" in capsys.readouterr().err



@pytest.mark.parametrize("arguments, message", [
    (["--config", "nosuch"], "configuration preset 'nosuch' not found"),
    (["--model", "JUNK"], "is not a vo_node model file"),
    (["--override", "frontend.no_such_key=1"], "unknown configuration key"),
    (["--override", "frontend=3"], "frontend is a section"),
])
def test_bad_engine_arguments_are_one_line(tmp_path, capsys, arguments, message):
    junk = tmp_path / "junk.pt"
    junk.write_text("junk\n")
    arguments = [str(junk) if value == "JUNK" else value for value in arguments]
    assert main([str(tmp_path), "--device", "cpu", *arguments]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
    assert error.count("\n") == 1


@pytest.mark.parametrize("arguments", [["--max-frames", "-5"], ["--stride", "0"]])
def test_bad_counts_are_usage_errors(tmp_path, capsys, arguments):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), *arguments])
    assert exit_info.value.code == EXIT_USAGE
    assert "expected a positive integer" in capsys.readouterr().err
