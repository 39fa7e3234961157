"""io/files.py: staged names, what counts as stale, failures inside a staged write."""

import logging
import os
import subprocess
import sys

import pytest

from optimum_rku.io import files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id until the kernel hands it out again


def _sibling(target, kind, host, pid):
    path = target.parent / f".{target.name}.{kind}-{host}-{pid}-0badc0de"
    path.mkdir()
    (path / "part").write_text("half written")
    return path


def test_only_leftovers_of_dead_processes_on_this_host_are_removed(tmp_path, caplog):
    target = tmp_path / "ckpt"
    target.mkdir()
    host = files._host_token()
    dead = _sibling(target, "tmp", host, _dead_pid())
    mine = _sibling(target, "tmp", host, os.getpid())  # a live process (this one) is still writing it
    other_host = _sibling(target, "tmp", "ffffff" if host != "ffffff" else "eeeeee", _dead_pid())
    unrelated = tmp_path / ".ckpt.tmp-legacy"  # not our naming scheme: never touched
    unrelated.mkdir()
    with caplog.at_level(logging.INFO, logger="optimum_rku"):
        handled = files.clean_stale(target)
    assert handled == [dead] and not dead.exists()
    assert mine.exists() and other_host.exists() and unrelated.exists()
    assert any("Removed" in r.getMessage() and dead.name in r.getMessage() for r in caplog.records)
    assert any("another host" in r.getMessage() for r in caplog.records)


def test_scratch_dirs_of_dead_processes_are_swept(tmp_path, monkeypatch):
    """`scratch_dir` (recovery's trainer output) removes what killed runs of this host left, nothing else."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host, prefix = files._host_token(), "optimum-rku-recovery-"
    dead = tmp_path / f"{prefix}{host}-{_dead_pid()}-abc"
    live = tmp_path / f"{prefix}{host}-{os.getpid()}-abc"  # this process may still be training in it
    other = tmp_path / f"{prefix}{'ffffff' if host != 'ffffff' else 'eeeeee'}-{_dead_pid()}-abc"
    legacy = tmp_path / f"{prefix}xyz"  # not the naming scheme (older releases): left alone
    for path in (dead, live, other, legacy):
        path.mkdir()
        (path / "checkpoint").write_text("x")
    new = files.scratch_dir(prefix)
    assert new.is_dir() and new.parent == tmp_path and new.name.startswith(f"{prefix}{host}-{os.getpid()}-")
    assert not dead.exists() and live.exists() and other.exists() and legacy.exists()


def test_parked_previous_directory_is_restored_only_when_the_name_is_missing(tmp_path):
    target = tmp_path / "ckpt"
    parked = _sibling(target, "old", files._host_token(), _dead_pid())
    assert files.restore_interrupted(target) and (target / "part").read_text() == "half written"
    assert not parked.exists()
    parked = _sibling(target, "old", files._host_token(), _dead_pid())
    assert not files.restore_interrupted(target)  # the name exists: nothing to restore
    files.clean_stale(target)
    assert not parked.exists()  # a parked copy beside a complete target is just a leftover


def test_failed_writes_leave_nothing_and_keep_the_previous_content(tmp_path):
    file = tmp_path / "out.json"
    file.write_text("previous")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.atomic_write(file, fail)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "weights").write_text("previous")
    with pytest.raises(RuntimeError), files.staged_directory(directory) as staged:
        (staged / "weights").write_text("half")
        raise RuntimeError("disk full")
    assert file.read_text() == "previous" and (directory / "weights").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out.json"]


@pytest.mark.parametrize("exchange", [True, False])
def test_staged_directory_replaces_with_or_without_the_one_step_swap(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old-only").write_text("x")
    with files.staged_directory(target) as staged:
        (staged / "weights").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["weights"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's private 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
