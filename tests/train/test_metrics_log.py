"""RUN_DIR/metrics.jsonl after a kill: a torn last line is dropped with a warning, damage elsewhere is an
error naming the file and the line (issue 11, defect 7a)."""

import json

import pytest

from train.metrics_log import MetricsLog, MetricsLogError, read_metrics


def _log(path, lines, tail=""):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + tail)
    return path


def test_torn_last_line_is_dropped_with_a_warning(tmp_path):
    path = _log(tmp_path / "metrics.jsonl", [{"step": 0, "val": {"mAP": 0.3}}, {"step": 1, "loss": 0.5}],
                tail='{"step": 2, "lo')
    warnings = []
    assert read_metrics(path, warnings.append) == [{"step": 0, "val": {"mAP": 0.3}}, {"step": 1, "loss": 0.5}]
    assert len(warnings) == 1 and f"{path}: line 3 is incomplete" in warnings[0]
    log = MetricsLog(path, True, warnings.append)
    log.truncate_after(1)
    log.write({"step": 2, "loss": 0.4})  # appends to a clean file again
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]


def test_a_bad_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, oops}\n{"step": 2}\n')
    with pytest.raises(MetricsLogError, match=r"metrics\.jsonl:2: not a metrics record"):
        read_metrics(path)
    with pytest.raises(MetricsLogError, match=r"metrics\.jsonl:2"):
        MetricsLog(path, True).truncate_after(5)
    assert read_metrics(tmp_path / "missing.jsonl") == []
