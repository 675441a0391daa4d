import os

import pytest

from igds.artifacts import atomic_write_text, stable_hash


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")
    from igds.artifacts import atomic_path
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_files_get_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_a_writer_that_recreates_the_file_still_gets_umask_mode(tmp_path):
    from igds.artifacts import atomic_path
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.bin") as tmp:
            tmp.unlink()  # like safetensors' save_file: a fresh owner-only file in its place
            os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    finally:
        os.umask(old)
    assert (tmp_path / "w.bin").stat().st_mode & 0o777 == 0o644


def test_atomic_folders_get_umask_modes_and_replace_the_old_folder(tmp_path):
    # saved adapters and the converted built-in model: mkdtemp alone would leave them owner-only (0700)
    from igds.artifacts import atomic_dir
    dest = tmp_path / "adapter"
    dest.mkdir()
    (dest / "stale.bin").write_text("old")
    old = os.umask(0o022)
    try:
        with atomic_dir(dest) as tmp:
            (tmp / "sub").mkdir()
            os.close(os.open(tmp / "sub" / "w.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))
    finally:
        os.umask(old)
    assert sorted(p.name for p in dest.iterdir()) == ["sub"]
    assert dest.stat().st_mode & 0o777 == 0o755 and (dest / "sub").stat().st_mode & 0o777 == 0o755
    assert (dest / "sub" / "w.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_failed_atomic_folder_leaves_the_old_one(tmp_path):
    from igds.artifacts import atomic_dir
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (dest / "config.json").exists()
