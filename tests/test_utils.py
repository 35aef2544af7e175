"""Files and folders written whole: the old content or the new one after any interruption, nothing left behind,
and the permissions the user's umask gives."""

from __future__ import annotations

import os
import stat

import pytest

from iopo_fast.utils import first_line, publish, read_json, replaced_atomically, staged_folder, write_atomically


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_file_is_replaced_whole_or_left_as_it_was(tmp_path, umask_022):
    path = tmp_path / "state.json"
    write_atomically(path, "old\n")
    with pytest.raises(KeyboardInterrupt), replaced_atomically(path) as temporary:
        temporary.write_text("half")
        raise KeyboardInterrupt  # killed mid-write
    assert path.read_text() == "old\n"
    write_atomically(path, "new\n")
    assert path.read_text() == "new\n" and mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def complete(folder) -> bool:
    return (folder / "done").is_file()


def test_a_folder_is_published_whole_and_a_complete_one_is_kept(tmp_path, umask_022):
    target = tmp_path / "cache" / "key"
    with staged_folder(target) as staging:
        (staging / "done").write_text("first")
        assert mode(staging) == 0o755  # readable by the other users of a shared cache
        publish(staging, target, complete)
    inode = (target / "done").stat().st_ino
    with staged_folder(target) as staging:  # another process finished the same folder first
        (staging / "done").write_text("second")
        publish(staging, target, complete)
    assert (target / "done").stat().st_ino == inode and (target / "done").read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["key"]


def test_an_incomplete_folder_is_replaced_and_a_failed_one_leaves_nothing(tmp_path):
    target = tmp_path / "key"
    target.mkdir()
    (target / "partial").write_text("")
    with pytest.raises(RuntimeError), staged_folder(target) as staging:
        (staging / "done").write_text("")
        raise RuntimeError("failed before publishing")
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
    with staged_folder(target) as staging:
        (staging / "done").write_text("")
        publish(staging, target, complete)
    assert sorted(p.name for p in target.iterdir()) == ["done"]


def test_first_line():
    assert first_line(ValueError("one\ntwo")) == "one" and first_line(KeyError()) == "KeyError"


class _FileError(Exception):
    pass


@pytest.mark.parametrize("content, message", [
    (None, ": No such file or directory"),
    ('{"a": 1,\n "b": }', ":2: invalid JSON: Expecting value"),
    (b"\xff\xfe{}", ": invalid JSON: not UTF-8 text"),
])
def test_read_json_raises_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "settings.json"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(_FileError) as raised:
        read_json(path, _FileError)
    assert str(raised.value) == f"{path}{message}"
    path.write_text('{"a": [1, 2]}')
    assert read_json(path, _FileError) == {"a": [1, 2]}

