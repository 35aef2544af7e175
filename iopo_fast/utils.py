"""Small helpers every layer uses: one-line errors, JSON files read with them, the cache folder, and files
and folders written whole.

A write that a kill must never leave half done goes through `replaced_atomically` (one file) or
`staged_folder` and `publish` (a folder): what readers see is the old content or the new, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none): one-line errors."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_json(path: str | Path, error: Callable[[str], Exception]):
    """The JSON value in the file `path`. A file that cannot be read, or is not JSON, raises `error` with a
    one-line message naming the file (and the line)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as failure:
        raise error(f"{path}: {failure.strerror or failure}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as failure:
        line = f":{failure.lineno}" if isinstance(failure, json.JSONDecodeError) else ""
        reason = failure.msg if isinstance(failure, json.JSONDecodeError) else "not UTF-8 text"
        raise error(f"{path}{line}: invalid JSON: {reason}") from None


def cache_dir() -> Path:
    """Where converted models, prepared data and offline resources are kept: `$IOPO_FAST_CACHE`, else
    `~/.cache/iopo-fast`."""
    return Path(os.environ.get("IOPO_FAST_CACHE", Path.home() / ".cache" / "iopo-fast"))


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the caller to write; once the block ends without an error it is
    synced to the disk and renamed onto `path`, so a kill at any moment leaves the old file or the new one
    (and at most the temporary file, which the next write of `path` replaces)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_file(path.parent)


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all (see `replaced_atomically`)."""
    with replaced_atomically(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def fsync_file(path: Path) -> None:
    """Sync a file, or a folder's entries, to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A new empty folder beside `target` to fill before `publish`; removed when the block ends if it is
    still there (not published)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0o700 would keep a shared cache from other users
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, target: Path, complete: Callable[[Path], bool]) -> None:
    """Rename the finished folder `staging` to `target`, unless another process completed `target`
    meanwhile: its files are kept (readers may already hold them open) and `staging` is dropped. An
    incomplete `target` (left by a kill, or damaged) is replaced."""
    if complete(target):
        shutil.rmtree(staging, ignore_errors=True)
        return
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
