"""The local metrics log (`metrics.jsonl`) survives a process killed while writing it.

The kills are real: a child process gets a file-size limit (RLIMIT_FSIZE), so the kernel stops it with
SIGXFSZ in the middle of a write, at a byte offset the test chooses.
"""

from __future__ import annotations

import inspect
import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablation import console
from ablation.console import MetricsFile

REPO = Path(__file__).resolve().parents[1]
ROW_BYTES = 64  # every row the tests write has this length, newline included


def row(step: int) -> dict:
    """A metrics row of ROW_BYTES once written: a fixed width makes the offset of a torn row predictable.
    The child processes get this function's source."""
    bare = json.dumps({"step": step, "loss/g/total": 1.5, "pad": ""}) + "\n"
    return {"step": step, "loss/g/total": 1.5, "pad": "x" * (ROW_BYTES - len(bare))}


def write_rows(path: Path, steps: range) -> bytes:
    text = "".join(json.dumps(row(step)) + "\n" for step in steps)
    path.write_text(text)
    return text.encode()


def killed_while_writing(path: Path, limit: int, body: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in a child process (`path`, `MetricsFile`, `row` and `limit_writes()` defined) whose files
    may not grow past `limit` bytes once it calls `limit_writes()`: the kernel kills it with SIGXFSZ at that
    offset of the write in progress."""
    script = textwrap.dedent("""
        import json, resource, signal, sys
        from pathlib import Path
        from ablation.console import MetricsFile
        path, limit = Path(sys.argv[1]), int(sys.argv[2])
        def limit_writes():  # after the imports, which may write bytecode caches
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: a write would only raise
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    """) + f"ROW_BYTES = {ROW_BYTES}\n" + inspect.getsource(row) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script, str(path), str(limit)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_row_width_is_fixed() -> None:
    assert {len(json.dumps(row(step)) + "\n") for step in (0, 9, 10, 99, 100, 999)} == {ROW_BYTES}


def test_a_kill_while_trimming_on_resume_leaves_the_old_log_whole(tmp_path: Path) -> None:
    """Resuming from step 50 rewrites the log with rows 0..49; a kill half-way through that rewrite must
    leave the previous log as it was (not truncated, not torn)."""
    path = tmp_path / "metrics.jsonl"
    before = write_rows(path, range(100))
    done = killed_while_writing(path, 20 * ROW_BYTES + 17, """
        mf = MetricsFile(path, resume=True)
        limit_writes()
        mf.write({"loss/g/total": 0.5}, 50)
        print("not killed")
    """)
    assert done.returncode == -signal.SIGXFSZ, done.stdout + done.stderr
    assert path.read_bytes() == before
    # the next attempt resumes from the intact log and trims it properly
    metrics = MetricsFile(path, resume=True)
    metrics.write({"loss/g/total": 0.5}, 50)
    rows = console.read_metrics(path)
    assert [r["step"] for r in rows] == [*range(50), 50]
    assert rows[-1]["loss/g/total"] == 0.5


def test_a_kill_mid_append_leaves_a_torn_last_line_that_resume_drops(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    done = killed_while_writing(path, 7 * ROW_BYTES + 30, """
        mf = MetricsFile(path, resume=False)
        limit_writes()
        for step in range(100):
            metrics = row(step)
            del metrics["step"]
            mf.write(metrics, step)
        print("not killed")
    """)
    assert done.returncode == -signal.SIGXFSZ, done.stdout + done.stderr
    text = path.read_text()
    assert len(text) == 7 * ROW_BYTES + 30 and not text.endswith("\n")  # the kill tore row 7

    metrics = MetricsFile(path, resume=True)  # the resumed trial, from its checkpoint at step 5
    assert [r["step"] for r in metrics.pending_rows] == list(range(7))
    assert console.read_metrics(path) == [row(step) for step in range(7)]
    metrics.write({"loss/g/total": 0.25}, 5)
    metrics.write({"loss/g/total": 0.125}, 6)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3, 4, 5, 6]
    assert json.loads(lines[-1]) == {"step": 6, "loss/g/total": 0.125}


def test_read_metrics_keeps_a_complete_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(row(0)) + "\n\n" + json.dumps(row(1)))
    assert console.read_metrics(path) == [row(0), row(1)]
    assert console.read_metrics(tmp_path / "absent.jsonl") == []


def test_an_unparsable_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(row(0)) + "\n" + '{"step": 1, "loss' + "\n" + json.dumps(row(2)) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: line 2 "):
        MetricsFile(path, resume=True)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: line 2 "):
        console.read_metrics(path)
