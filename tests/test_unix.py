"""The runtime directory and lock (iii_supervisor.server.unix): refused when it is a symlink or
not ours, created 0700 without following links. Real files in tmp_path; no sockets needed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from iii_supervisor.errors import RuntimeDirError
from iii_supervisor.server.unix import RuntimeLock, prepare_runtime_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_creates_a_private_directory_with_its_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "run"
    old = os.umask(0o022)
    try:
        assert prepare_runtime_dir(target) == target
    finally:
        os.umask(old)
    assert stat.S_ISDIR(os.lstat(target).st_mode)
    assert mode(target) == 0o700


def test_an_existing_directory_of_ours_is_made_private(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    prepare_runtime_dir(target)
    assert mode(target) == 0o700


def test_a_symlink_to_a_directory_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"  # e.g. another directory of ours, readable by others
    victim.mkdir()
    os.chmod(victim, 0o755)
    link = tmp_path / "iii-supervisor-1000"
    link.symlink_to(victim)
    with pytest.raises(RuntimeDirError, match="is a symbolic link") as info:
        prepare_runtime_dir(link)
    assert str(link) in info.value.message
    assert mode(victim) == 0o755  # not chmodded
    assert os.listdir(victim) == []


def test_a_dangling_symlink_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RuntimeDirError, match="is a symbolic link"):
        prepare_runtime_dir(link)
    assert not (tmp_path / "elsewhere").exists()


def test_a_directory_of_another_uid_is_refused_and_not_chmodded(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.mkdir()
    os.chmod(target, 0o755)
    other = os.getuid() + 4242
    if os.getuid() == 0:
        os.chown(target, other, -1)
    else:  # cannot give a directory away: use one that is not ours
        target = Path("/")
        other = os.stat(target).st_uid
        if other == os.getuid():
            pytest.skip("no directory of another uid available")
    before = mode(target)
    with pytest.raises(RuntimeDirError, match=f"owned by uid {other}, not by us"):
        prepare_runtime_dir(target)
    assert mode(target) == before


def test_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.write_text("")
    with pytest.raises(RuntimeDirError, match="is not a directory"):
        prepare_runtime_dir(target)


def test_a_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    run = prepare_runtime_dir(tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / "supervisor.lock").symlink_to(victim)
    with pytest.raises(RuntimeDirError, match="lock file"):
        RuntimeLock(run).acquire()
    assert victim.read_text() == "keep me"


def test_cli_start_refuses_a_symlinked_runtime_dir(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    os.chmod(victim, 0o755)
    link = tmp_path / "r"
    link.symlink_to(victim)
    workers = tmp_path / "workers"
    workers.mkdir()
    proc = subprocess.run([sys.executable, "-m", "iii_supervisor", "start", str(workers), "--runtime-dir", str(link),
                           "--http-port", "0"], check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "is a symbolic link" in proc.stderr
    assert mode(victim) == 0o755
    assert os.listdir(victim) == []
