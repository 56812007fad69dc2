"""Benchmark statistics, table and configuration overrides, and one short end-to-end run."""

import json
import logging
import os
import signal

import pytest

from vo_node import bench
from vo_node.config import ConfigError


def _measurement(frames, warmup=2):
    return {
        "config": "small",
        "warmup_frames": warmup,
        "frames": frames,
        "finish_seconds": 0.5,
        "peak_memory_bytes": 300 * bench.BYTES_PER_MEBIBYTE,
        "memory_kind": "cpu_rss",
    }


def _frame(wall, cpu=None, edges=100):
    record = {stage: wall / len(bench.STAGES) for stage in bench.STAGES}
    record.update(wall=wall, state="tracking", keyframe=True, edges=edges)
    if cpu is not None:
        record["cpu"] = cpu
    return record


def test_summary_reports_cpu_time():
    frames = [_frame(9.0, 9.0), _frame(9.0, 9.0)] + [
        _frame(wall, cpu) for wall, cpu in [(0.2, 0.05), (0.4, 0.07), (0.3, 0.06)]
    ]
    summary = bench.summarize(_measurement(frames))
    assert summary["measured_frames"] == 3
    assert summary["milliseconds"]["cpu"]["median"] == pytest.approx(60.0)
    assert summary["milliseconds"]["wall"]["median"] == pytest.approx(300.0)
    assert summary["fps_median"] == pytest.approx(1000.0 / 300.0)
    table = bench.format_table([summary])
    assert "cpu" in table[1]
    assert "60.0/" in table[3]


def test_table_marks_missing_cpu_time():
    # Reports written before the CPU column existed have no "cpu" per frame.
    summary = bench.summarize(_measurement([_frame(0.1), _frame(0.2), _frame(0.3)], warmup=1))
    assert "cpu" not in summary["milliseconds"]
    row = bench.format_table([summary])[3].split()
    assert row[-5] == "-"


def _settings(*overrides):
    return bench.BenchSettings(
        config="small", sequence="unused", frames=1, stride=1, width=376, threads=1,
        model=None, device="cpu", overrides=tuple(overrides),
    )


def test_overrides_reach_engine_config():
    config, _, _, _ = bench._load_engine(
        _settings("frontend.patches_per_frame=20", "ba.lm_max_trials=2")
    )
    assert config.frontend.patches_per_frame == 20
    assert config.ba.lm_max_trials == 2
    assert config.max_image_width == 376


def test_unknown_override_raises():
    with pytest.raises(ConfigError, match="frontend.bogus"):
        bench._load_engine(_settings("frontend.bogus=1"))


def test_override_option_collects_pairs():
    args = bench.build_parser().parse_args(
        ["--override", "frontend.patches_per_frame=20", "--override", "ba.iterations=1"]
    )
    assert args.override == ["frontend.patches_per_frame=20", "ba.iterations=1"]


def test_warmup_ends_after_the_trial():
    states = ["initializing"] * 5 + ["tracking"] * 4
    trial = [False] * 5 + [True, True, False, True]
    records = [{"state": state, "on_trial": flag} for state, flag in zip(states, trial)]
    assert bench.warmup_frames(records, fallback=8) == 7
    older = [{"state": state} for state in states]
    assert bench.warmup_frames(older, fallback=8) == 5
    never = [{"state": "initializing"}] * 3
    assert bench.warmup_frames(never, fallback=8) == 3
    assert bench.warmup_frames(never * 4, fallback=8) == 8


def test_bench_end_to_end_names_sequence(tmp_path, capsys):
    from vo_node.demo_data import render_demo_sequence

    sequence = render_demo_sequence(tmp_path / "sequence", num_frames=24, height=96, width=128)
    report_path = tmp_path / "bench.json"
    argv = [
        str(sequence), "--configs", "small", "--frames", "24", "--threads", "1",
        "--device", "cpu", "--output", str(report_path), "--log-level", "WARNING",
    ]

    status = bench.main(argv)

    printed = capsys.readouterr().out
    assert status == 0
    assert f"frames of {sequence}" in printed
    report = json.loads(report_path.read_text())
    summary = report["results"][0]["summary"]
    measurement = report["results"][0]["measurement"]
    assert measurement["sequence"] == str(sequence)
    assert len(measurement["frames"]) == 24
    assert summary["measured_frames"] > 0
    assert summary["measured_frames"] + summary["warmup_discarded"] == 24
    assert summary["milliseconds"]["wall"]["median"] > 0
    assert summary["fps_median"] > 0


BAD_ARGUMENTS = [
    (["--configs", "small", "nosuch"], ["nosuch"]),
    (["--override", "frontend.no_such_key=1"], ["no_such_key"]),
    (["--configs", "small", "small"], ["more than once"]),
    (
        ["--configs", "small", "small:frontend.no_such_key=1"],
        ["no_such_key", "--configs small:frontend.no_such_key=1"],
    ),
]


@pytest.mark.parametrize("arguments, expected", BAD_ARGUMENTS)
def test_bad_arguments_stop_before_measuring(tmp_path, caplog, arguments, expected):
    caplog.set_level(logging.INFO)
    report_path = tmp_path / "bench.json"

    status = bench.main([*arguments, "--output", str(report_path)])

    assert status == 2
    assert not report_path.exists()
    for text in expected:
        assert text in caplog.text
    assert "measuring" not in caplog.text


def test_width_below_minimum_is_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        bench.build_parser().parse_args(["--width", "8"])
    assert stop.value.code == 2
    assert "--width: expected a width of at least 32 pixels, got 8" in capsys.readouterr().err
    assert bench.build_parser().parse_args(["--width", "32"]).width == 32


def test_config_spec_splits_own_overrides():
    assert bench.parse_config_spec("accurate") == ("accurate", ())
    assert bench.parse_config_spec("small:frontend.patches_per_frame=48,ba.iterations=2") == (
        "small", ("frontend.patches_per_frame=48", "ba.iterations=2")
    )
    assert bench.parse_config_spec("config/a:b.yaml") == ("config/a:b.yaml", ())
    with pytest.raises(ConfigError, match="'junk' after the colon is not KEY=VALUE"):
        bench.parse_config_spec("accurate:junk")
    assert bench.parse_config_spec("config/a:b.yaml:ba.iterations=2") == (
        "config/a:b.yaml", ("ba.iterations=2",)
    )
    with pytest.raises(ConfigError, match="drop the colon"):
        bench.parse_config_spec("small:")


def test_rounds_pair_ratios_within_a_round():
    def summary(spec, round_number, total):
        return {"config": spec, "round": round_number,
                "milliseconds": {"stages_total": {"median": total}}}

    summaries = [summary("a", 1, 50.0), summary("b", 1, 45.0), summary("a", 2, 60.0),
                 summary("b", 2, 57.0), summary("a", 3, 52.0), summary("b", 3, 46.8)]
    rounds = bench.summarize_rounds(summaries, ["a", "b"])
    first, second = rounds["configs"]
    assert first["median_ms"] == pytest.approx(52.0)
    assert first["median_ratio"] == pytest.approx(1.0)
    assert second["ratio_to_first"] == pytest.approx([0.9, 0.95, 0.9])
    assert second["median_ratio"] == pytest.approx(0.9)
    lines = bench.format_rounds(rounds)
    assert "b: 45.0, 57.0, 46.8 (median 46.8); ratio 0.900 (rounds 0.900 to 0.950)" in lines[2]


def test_rounds_end_to_end_alternate_configs(tmp_path, capsys):
    from vo_node.demo_data import render_demo_sequence

    sequence = render_demo_sequence(tmp_path / "sequence", num_frames=16, height=96, width=128)
    report_path = tmp_path / "bench.json"
    specs = ["small", "small:frontend.reuse_correlation=false"]
    argv = [
        str(sequence), "--configs", *specs, "--rounds", "2", "--frames", "16", "--threads", "1",
        "--device", "cpu", "--output", str(report_path), "--log-level", "WARNING",
    ]

    status = bench.main(argv)

    assert status == 0
    report = json.loads(report_path.read_text())
    order = [(r["summary"]["round"], r["summary"]["config"]) for r in report["results"]]
    assert order == [(1, specs[0]), (1, specs[1]), (2, specs[0]), (2, specs[1])]
    engine_configs = [r["measurement"]["engine_config"] for r in report["results"]]
    assert [c["frontend"]["reuse_correlation"] for c in engine_configs] == [True, False] * 2
    assert [row["config"] for row in report["rounds"]["configs"]] == specs
    assert len(report["rounds"]["configs"][1]["ratio_to_first"]) == 2
    assert "ratio to small within a round" in capsys.readouterr().out


def _warmup_frame(wall, state="tracking", on_trial=True):
    record = _frame(wall)
    record.update(state=state, on_trial=on_trial)
    return record


def test_summary_flags_trial_frames():
    # No frame left the trial, so the fallback warm-up leaves trial frames in the measurement.
    frames = [_warmup_frame(0.5, "initializing", False)] * 2 + [_warmup_frame(0.3)] * 4
    summary = bench.summarize(_measurement(frames, warmup=2))
    steady = bench.summarize(_measurement([_frame(0.1)] * 4, warmup=1))

    assert summary["steady"] is False
    assert summary["not_steady_frames"] == 4
    assert steady["steady"] is True
    assert steady["not_steady_frames"] == 0
    table = bench.format_table([summary, steady])
    assert table[3].split()[0] == "small*"
    assert table[4].split()[0] == "small"
    assert table[-1].startswith("* measured frames include initialisation or depth-hypothesis")
    assert "raise --frames" in table[-1]
    assert not any(line.startswith("*") for line in bench.format_table([steady]))


def test_summary_counts_tracking_loss_apart():
    # Steady after the warm-up, then two losses, each followed by re-initialisation and a trial.
    loss = [_warmup_frame(0.5, "lost", False), _warmup_frame(0.4, "initializing", False),
            _warmup_frame(0.3)]
    frames = ([_warmup_frame(0.5, "initializing", False)] * 2 + [_frame(0.1)] * 3 + loss
              + [_frame(0.1)] * 2 + loss + [_frame(0.1)])
    summary = bench.summarize(_measurement(frames, warmup=2))

    assert summary["steady"] is True
    assert summary["not_steady_frames"] == 0
    assert summary["lost_frames"] == 6
    assert summary["tracking_losses"] == 2
    assert summary["measured_frames"] == 12
    table = bench.format_table([summary])
    assert table[3].split()[0] == "small"
    assert table[3].split()[-1] == "6"
    assert not any("raise --frames" in line for line in table)
    assert table[-1].startswith("lost: measured frames that are lost or re-initialise")

    warning = bench.tracking_loss_warning("small", summary)
    assert warning.startswith("small: tracking was lost 2 times after the warm-up")
    assert "6 of 12 measured frames" in warning
    assert "--frames" not in warning
    assert "trial" not in warning


def test_tracking_loss_keeps_round_ratio():
    steady = [_frame(0.1)] * 4
    lost = [_frame(0.1)] * 2 + [_warmup_frame(0.5, "lost", False), _frame(0.1)]
    summaries = []
    for spec, frames in [("a", steady), ("b", lost)]:
        summary = bench.summarize(_measurement(frames, warmup=0))
        summary.update(config=spec, round=1)
        summaries.append(summary)

    rounds = bench.summarize_rounds(summaries, ["a", "b"])

    assert summaries[1]["lost_frames"] == 1
    assert rounds["configs"][1]["ratio_to_first"] == [pytest.approx(1.0)]
    assert rounds["configs"][1]["median_ratio"] == pytest.approx(1.0)
    assert "left out" not in bench.format_rounds(rounds)[2]


def test_unsettled_warmup_is_not_a_loss():
    # The engine never left the trial, so these are warm-up frames, not tracking losses.
    frames = [_warmup_frame(0.5, "initializing", False)] * 2 + [_warmup_frame(0.3)] * 4
    summary = bench.summarize(_measurement(frames, warmup=2))

    assert summary["not_steady_frames"] == 4
    assert summary["lost_frames"] == 0
    assert summary["tracking_losses"] == 0
    assert not any(line.startswith("lost:") for line in bench.format_table([summary]))


def test_not_steady_warning_names_frames_option():
    summary = {"not_steady_frames": 32, "measured_frames": 32}
    measurement = {"engine_config": {"frontend": {
        "init_frames": 8, "hypothesis_frames": 30, "hypothesis_extra_frames": 30}}}

    text = bench.not_steady_warning("small", summary, measurement, frames=40)

    assert text.startswith("small: 32 of 32 measured frames are initialisation or")
    assert "within the 40 frames tracked" in text
    assert "Raise --frames" in text
    assert "up to 60 frames" in text


def test_rounds_ratio_withheld_across_phases():
    def summary(spec, round_number, total, steady=True):
        return {"config": spec, "round": round_number, "steady": steady,
                "milliseconds": {"stages_total": {"median": total}}}

    summaries = [summary("a", 1, 50.0, steady=False), summary("b", 1, 31.5),
                 summary("a", 2, 40.0), summary("b", 2, 36.0)]
    rounds = bench.summarize_rounds(summaries, ["a", "b"])
    first, second = rounds["configs"]
    assert second["ratio_to_first"] == [None, pytest.approx(0.9)]
    assert second["median_ratio"] == pytest.approx(0.9)
    assert first["steady"] == [False, True]
    lines = bench.format_rounds(rounds)
    assert "ratio 0.900 (rounds 0.900 to 0.900), 1 round left out" in lines[2]

    never = bench.summarize_rounds(summaries[:2], ["a", "b"])
    assert never["configs"][1]["ratio_to_first"] == [None]
    assert never["configs"][1]["median_ratio"] is None
    assert "ratio not reported" in bench.format_rounds(never)[2]
    assert "raise --frames" in bench.format_rounds(never)[2]
    json.dumps(never, allow_nan=False)


PROGRESS_TIMEOUT_S = 120.0


def test_ctrl_c_exits_130_without_report(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from vo_node.demo_data import render_demo_sequence

    sequence = render_demo_sequence(tmp_path / "sequence", num_frames=200, height=96, width=128)
    report_path = tmp_path / "out" / "bench.json"
    command = [sys.executable, "-m", "vo_node.bench", str(sequence), "--frames", "200",
               "--threads", "1", "--device", "cpu", "--output", str(report_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               cwd=os.path.dirname(os.path.dirname(__file__)))
    # tqdm redraws its bar with carriage returns, so stderr is read by character.
    stderr_chunks = []
    reader = threading.Thread(
        target=lambda: stderr_chunks.extend(iter(lambda: process.stderr.read(1), "")),
        daemon=True,
    )
    reader.start()
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while "frame/s" not in "".join(stderr_chunks) and time.monotonic() < deadline:
        time.sleep(0.1)
    # Ctrl-C in a terminal signals the whole process group, the measuring child too.
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    reader.join(timeout=10)
    stderr = "".join(stderr_chunks)

    assert "frame/s" in stderr, "the child never started tracking"
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert "interrupted by Ctrl-C; no report was written" in stderr
    assert not report_path.exists()
    assert not list(tmp_path.rglob("*.tmp"))


CHILD_DEATH_TIMEOUT_S = 120


def _kill_self(settings):
    """Replace ``bench.measure`` in the child: die as the out-of-memory killer leaves it."""
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_self(settings):
    """Replace ``bench.measure`` in the child: die as a segmentation fault leaves it."""
    os.kill(os.getpid(), signal.SIGSEGV)


DEAD_CHILDREN = [
    (_kill_self, ["killed by SIGKILL (signal 9)", "out-of-memory killer"]),
    (_crash_self, ["killed by SIGSEGV (signal 11)", "crashed in native code"]),
]


# The timeout turns a hang, as in a pool that waits for a lost task, into a failure.
@pytest.mark.timeout(CHILD_DEATH_TIMEOUT_S)
@pytest.mark.parametrize("worker, expected", DEAD_CHILDREN)
def test_dead_child_fails_with_error(tmp_path, monkeypatch, caplog, worker, expected):
    # The child is spawned and imports ``measure`` by name, so it runs the replacement.
    monkeypatch.setattr(bench, "measure", worker)
    report_path = tmp_path / "bench.json"
    argv = [str(tmp_path / "unused"), "--configs", "small", "--frames", "4", "--device", "cpu",
            "--output", str(report_path)]

    status = bench.main(argv)

    assert status == bench.EXIT_FAILED
    assert "measuring small failed: its child process was" in caplog.text
    for text in expected:
        assert text in caplog.text
    assert f"No report was written to {report_path}" in caplog.text
    assert not report_path.exists()


@pytest.mark.timeout(CHILD_DEATH_TIMEOUT_S)
def test_child_error_is_raised_in_parent(tmp_path, caplog):
    report_path = tmp_path / "bench.json"
    missing = tmp_path / "no_such_sequence"
    argv = [str(missing), "--configs", "small", "--frames", "4", "--threads", "1",
            "--device", "cpu", "--output", str(report_path), "--log-level", "WARNING"]

    status = bench.main(argv)

    assert status == bench.EXIT_USAGE
    assert str(missing) in caplog.text
    assert "child process" not in caplog.text
    assert not report_path.exists()
