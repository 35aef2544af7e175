"""Where training records come from: a file, a folder of files, a saved `datasets` data set, a Hugging Face
Hub data set, or an entry of LLaMA-Factory's `dataset_info.json`.

`resolve_source(dataset, dataset_dir)` turns the config's `dataset` into a `DataSource`:

- a `.jsonl` or `.json` file (JSON Lines, or one JSON array), a `.parquet` file, or a folder holding such
  files (read in name order, recursively);
- a folder written by `datasets`' `save_to_disk` (its "train" split for a `DatasetDict`);
- with `dataset_dir`, a name in `<dataset_dir>/dataset_info.json`, LLaMA-Factory's registry, the way
  the original IOPO release ships its data: the entry's `file_name` (relative to `dataset_dir`) and its
  `columns`, which map the record's own column names onto the ones read here (`messages` is
  `conversations`; `chosen`, `rejected`, `system` keep their names);
- else a Hub data set, `name` or `name:split` (split "train" by default), through `datasets.load_dataset`.

`read_records(source)` yields `(where, record, problem)` for every record: `where` names the file and line
(or array index, or row) for the rejection report, `problem` says why a line is not valid JSON ("" if it is).
It is `record_texts` (each record's JSON bytes) read by `parse_record_text`, the two halves that a
preparation runs in different processes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..utils import first_line, read_json

SUFFIXES = (".jsonl", ".json", ".parquet")
# LLaMA-Factory's `columns` names (sharegpt ranking format) -> the record keys `records.py` reads.
LLAMA_FACTORY_COLUMNS = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"}


class DataError(ValueError):
    """A data problem that stops the run; its message is one line naming the file and the reason."""


@dataclass(frozen=True)
class DataSource:
    """Records to read: `location` a local path or a Hub name; `columns` maps record keys read here to the
    source's own (LLaMA-Factory `columns`); `split` of a Hub data set."""

    location: str
    columns: dict[str, str] = field(default_factory=dict)
    split: str = "train"

    @property
    def path(self) -> Path:
        return Path(self.location)

    @property
    def is_local(self) -> bool:
        return self.path.exists()

    def __str__(self) -> str:
        return self.location

    def fingerprint(self) -> bytes:
        """A digest of the records' bytes (every file of a folder), or of the Hub name and split."""
        digest = hashlib.sha256(json.dumps([self.columns, self.split], sort_keys=True).encode())
        files = sorted(p for p in self.path.rglob("*") if p.is_file()) if self.path.is_dir() else [self.path]
        for file in files if self.is_local else []:
            digest.update(str(file.relative_to(self.path) if self.path.is_dir() else file.name).encode())
            hash_file(digest, file)
        if not self.is_local:
            digest.update(self.location.encode())
        return digest.digest()


def hash_file(digest, path: Path):
    """`digest` (a hashlib object) updated with the bytes of `path`, read block by block."""
    with open(path, "rb") as content:
        for block in iter(lambda: content.read(1 << 20), b""):
            digest.update(block)
    return digest


def resolve_source(dataset: str | Path | DataSource, dataset_dir: str | Path | None = None) -> DataSource:
    """The `DataSource` that `dataset` names (see the module docstring); a one-line `DataError` if none."""
    if isinstance(dataset, DataSource):
        return dataset
    dataset = str(dataset)
    if dataset_dir is not None:
        registry = Path(dataset_dir) / "dataset_info.json"
        if not registry.is_file():
            raise DataError(f"{registry}: no such file (dataset_dir: {dataset_dir})")
        entries = read_json(registry, DataError)
        if dataset in entries:
            return _registered(entries[dataset], dataset, registry)
    if Path(dataset).exists():
        return DataSource(dataset)
    if dataset.endswith(SUFFIXES) or dataset.startswith(("/", ".", "~")) or dataset_dir is not None:
        registered = f", nor an entry of {dataset_dir}/dataset_info.json" if dataset_dir is not None else ""
        raise DataError(f"{dataset}: no such data file or folder{registered}")
    name, _, split = dataset.partition(":")
    return DataSource(name, split=split or "train")


def _registered(entry: dict, name: str, registry: Path) -> DataSource:
    if "file_name" not in entry:
        raise DataError(f"{registry}: entry {name!r} has no file_name (only local files are read from dataset_info)")
    unknown = sorted(set(entry.get("columns", {})) - set(LLAMA_FACTORY_COLUMNS))
    if unknown:
        raise DataError(f"{registry}: entry {name!r} maps columns iopo-fast does not read: {', '.join(unknown)}")
    path = registry.parent / entry["file_name"]
    if not path.exists():
        raise DataError(f"{path}: no such data file or folder (entry {name!r} of {registry})")
    columns = {LLAMA_FACTORY_COLUMNS[key]: value for key, value in entry.get("columns", {}).items()
               if LLAMA_FACTORY_COLUMNS[key] != value}
    return DataSource(str(path), columns)


def check_source(source: DataSource) -> None:
    """A local source that holds no records is an error before anything else loads; a Hub name is checked
    when it is read."""
    if source.is_local and source.path.is_dir() and not _is_saved_dataset(source.path) and not _files(source.path):
        raise DataError(f"{source}: a folder without {', '.join(SUFFIXES)} files or a saved data set")


def read_records(source: DataSource):
    """Yield (where, record, problem) for every record of `source`, renamed by its `columns`."""
    for where, text in record_texts(source):
        yield where, *parse_record_text(text, source.columns)


def record_texts(source: DataSource):
    """Yield (where, the record as UTF-8 JSON bytes, not yet checked) for every record of `source`: a JSON
    Lines file's lines as they are, the records of other sources written as JSON (values that are not
    JSON types as strings). `parse_record_text` reads them; the preparation does that in its workers."""
    path = source.path
    if not source.is_local:
        yield from _rows(_hub_dataset(source), f"{source.location}:{source.split}")
    elif path.is_dir() and _is_saved_dataset(path):
        import datasets

        saved = datasets.load_from_disk(str(path))
        yield from _rows(saved["train"] if isinstance(saved, datasets.DatasetDict) else saved, str(path))
    elif path.is_dir():
        for file in _files(path):
            yield from _file_texts(file)
    else:
        yield from _file_texts(path)


def parse_record_text(text: bytes, columns: dict[str, str]) -> tuple[object, str]:
    """(the record, renamed by `columns`, "") from `record_texts`' bytes, or (what to show of a line that
    is not a record, why)."""
    try:
        line = text.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        return repr(text[:200]), f"not UTF-8 text (byte {error.start + 1})"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return line, f"invalid JSON: {error.msg} at column {error.colno}"
    if columns and isinstance(record, dict):
        record = {**record, **{ours: record.get(theirs) for ours, theirs in columns.items()}}
    return record, ""


def _file_texts(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as parquet

        yield from _rows(parquet.read_table(path).to_pylist(), str(path))
        return
    if _starts_with_bracket(path):
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: invalid JSON array: {error.msg}") from None
        yield from _rows(records, str(path))
        return
    # JSON Lines, read line by line: memory does not grow with the file. Lines end at "\n" only (a JSON
    # string may hold U+2028 or a carriage return).
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if line.isspace() or (not line.isascii() and line.decode("utf-8", "replace").isspace()):
                continue
            yield f"{path}:{number}", line


def _starts_with_bracket(path: Path) -> bool:
    """Whether the file's first non-blank character is "[": a JSON array rather than JSON Lines."""
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 16), b""):
            text = block.lstrip()
            if text:
                return text.startswith(b"[")
    return False


def _rows(rows, where: str):
    for index, record in enumerate(rows):
        yield f"{where}[{index}]", json.dumps(record, ensure_ascii=False, default=str).encode()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."))


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by `datasets`' `save_to_disk` (a `Dataset` or a `DatasetDict`)."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _hub_dataset(source: DataSource):
    import datasets

    try:
        return datasets.load_dataset(source.location, split=source.split)
    except Exception as error:  # offline, unknown name, no such split: all one line for the user
        raise DataError(f"{source.location}: not a local file or folder, and the Hugging Face Hub data set cannot be "
                        f"loaded (split {source.split!r}): {first_line(error)}") from None
