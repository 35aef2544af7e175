"""Append-only JSON-lines files that survive a kill: `AppendLog` writes, `complete_lines` reads back.

A process killed while appending leaves at most one cut line at the end of the file (cut anywhere, even
inside a multi-byte character). `complete_lines` drops such lines, and any other line that is not valid
JSON of the expected shape, and rewrites the file without them (through a synced temporary file and a
rename) so that the next append starts on a fresh line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..utils import replaced_atomically

FSYNC_SECONDS = 2.0  # appended lines reach the disk at least this often while they stream in, and at `close`


def complete_lines(path: Path, valid: Callable[[object], bool] = lambda entry: True) -> Iterator[tuple[int, int, object]]:
    """(offset, length in bytes, parsed entry) of every complete line of `path` that parses and is `valid`, in
    one pass. The offsets are those of the file once the iteration is over: if it held any other line, it is
    rewritten without them at the end (a rare second pass, after a kill). Nothing for a file that does not exist."""
    if not path.is_file():
        return
    offset, clean = 0, True
    with path.open("rb") as lines:
        for line in lines:
            entry = _parse(line, valid)
            if entry is None:
                clean = False
                continue
            if not line.endswith(b"\n"):  # a complete last line that lost only its newline: kept, completed
                clean = False
            yield offset, len(line.rstrip(b"\n")) + 1, entry
            offset += len(line.rstrip(b"\n")) + 1
    if not clean:
        _rewrite_without_bad_lines(path, valid)


def _parse(line: bytes, valid: Callable[[object], bool]) -> object:
    """The line's JSON value if it parses and is `valid`, else None."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return entry if valid(entry) else None


def _rewrite_without_bad_lines(path: Path, valid: Callable[[object], bool]) -> None:
    with replaced_atomically(path) as temporary, temporary.open("wb") as kept, path.open("rb") as lines:
        for line in lines:
            if _parse(line, valid) is not None:
                kept.write(line.rstrip(b"\n") + b"\n")


class AppendLog:
    """Lines appended to a JSON-lines file, each flushed at once (a killed process loses none); synced to the
    disk at the first append `FSYNC_SECONDS` after the last sync, and at `close` (against a power loss)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None
        self._synced = time.monotonic()

    def append(self, entry: object) -> tuple[int, int]:
        """(offset, length in bytes) of the line written for `entry`."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        try:
            line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        except UnicodeEncodeError:  # a lone surrogate, valid in JSON text: escaped, so the line stays UTF-8
            line = (json.dumps(entry) + "\n").encode()
        offset = self._file.tell()
        self._file.write(line)
        self._file.flush()
        if time.monotonic() - self._synced > FSYNC_SECONDS:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()
        return offset, len(line)

    def close(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
