"""Atomic writes: the target is either the old file or the whole new one, and no temp file is left."""

from __future__ import annotations

import numpy as np
import pytest

from data.atomic import atomic_write, atomic_write_text


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one\n")
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_failed_writer_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("good\n")

    def broken(p):
        p.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_temp_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    target = tmp_path / "s.npz"
    atomic_write(target, lambda p: np.savez(p, x=np.arange(3)))  # np.savez appends .npz to other names
    with np.load(target) as z:
        assert z["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    """SIGKILL runs no clean-up: the next write of the same target removes the dead process's temp file."""
    import subprocess
    import sys

    from data.atomic import temp_path

    target = tmp_path / "clusters.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_path(target, pid=int(dead.stdout))
    stale.write_text("half a file")
    live = temp_path(target, pid=1)  # a live process (init): its temp file is in use, never touched
    live.write_text("being written")
    other = target.with_name(".other.x-1.tmp.csv")
    other.write_text("not ours")
    atomic_write_text(target, "whole\n")
    assert target.read_text() == "whole\n"
    assert not stale.exists()
    assert live.exists() and other.exists()


def test_a_folder_written_whole_gets_the_permissions_of_the_umask(tmp_path):
    """Trial of issue 14: the map folder came out 0700 (the scratch folder's mode), closed to colleagues."""
    import os
    import stat

    from data.atomic import atomic_dir

    old = os.umask(0o022)
    try:
        atomic_dir(tmp_path / "out", lambda d: (d / "f.txt").write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_a_device_or_a_pipe_is_never_replaced_by_a_plain_file(tmp_path):
    import os
    import stat

    from data.atomic import NotARegularFileError, atomic_write_text

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFileError, match="not a regular file"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(OSError, match="not a regular file"):
        atomic_write_text("/dev/null", "x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
