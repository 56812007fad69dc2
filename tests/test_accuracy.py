"""The accuracy command: table formatting and argument errors (tracking itself is tested elsewhere)."""

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
