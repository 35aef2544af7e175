"""Tokenized data sets prepared once, in parallel, and cached as Arrow files that every rank memory-maps.

`prepared_examples(path, tokenizer, ...)` gives the same examples, statistics and rejections as
`records.load_examples` (its one-process twin, which the tests compare it with), but:

- the records are validated, chat-templated (by joining the pieces of a `chat_splice.SplicedTemplate`
  where the template allows it) and tokenized (by a `tiktoken_twin.TiktokenTwin` of the tokenizer where
  there is one) by `datasets`' batched `map` over `num_proc` worker processes, which write the token ids
  to Arrow files directly from NumPy buffers;
- the result is saved under `<cache>/data/<key>/`, the key a digest of the data file's bytes, the
  tokenizer (its name, vocabulary size, special tokens and chat template), `cutoff_len` and the loss
  mode, so that a second start or a resume reads it instead of tokenizing again. An edited file or
  another tokenizer gives another key; a directory without its completion marker (a preparation
  killed half-way), or whose files no longer match the digests the marker lists, is never read, and
  is rebuilt;
- under several ranks, local rank 0 of each node prepares while the others wait, then all of them
  memory-map the same files rather than each holding its own copy of the token lists; if the preparation
  fails, every rank stops with its error (`distributed.raise_if_any_rank_failed`).

The rejected records are kept with the cache, so a cached start reports them (file, line, reason)
exactly as the first one did. `load_datasets` reads a training setting's comma-separated data sets,
mixed by `sampling.MixedExamples`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..distributed import raise_if_any_rank_failed
from ..utils import publish, staged_folder
from .chat_splice import SpliceMismatch
from .examples import DPOExample, Example, IOPOExample, SFTExample
from .records import ChatEncoder, DataStats, RejectionLog, _parse_record, _Rejected, assemble, conversations
from .sampling import MixedExamples
from .sources import DataError, DataSource, check_source, hash_file, parse_record_text, record_texts, resolve_source
from .tiktoken_twin import EncodingMismatch

MIN_RECORDS_PER_WORKER = 100  # below it a worker process costs more than it saves
BATCH_SIZE = 256  # records tokenized in one call of the tokenizer
RECORDS_PER_BLOCK = 1000  # records read before they are written to the records' Arrow file
# Bump when the prepared columns, the tokenization policy or the record formats read change: older caches are
# then not read.
FORMAT_VERSION = 4
COMPLETE = "complete.json"  # written last: its presence means the directory is whole


class PreparedExamples(Sequence):
    """The examples of a prepared data set, read from its memory-mapped Arrow table as they are indexed;
    `fingerprint` is its cache key, a digest of everything that decides them."""

    def __init__(self, dataset, loss: str, fingerprint: str):
        self.dataset = dataset
        self.fingerprint = fingerprint
        self.example_type = {"iopo": IOPOExample, "dpo": DPOExample, "sft": SFTExample}[loss]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Example:
        return self.example_type(*self.dataset[int(index)]["sequences"])


def prepared_examples(path: str | Path | DataSource, tokenizer, cache_root: str | Path, loss: str = "iopo",
                      cutoff_len: int = 1024, rejection_log: RejectionLog | None = None,
                      num_proc: int = 1) -> tuple[PreparedExamples, DataStats]:
    """The examples of `path`, prepared into `cache_root` if they are not there yet (see the module docstring)."""
    import datasets

    source = resolve_source(path)
    check_source(source)
    key = cache_key(source, tokenizer, loss, cutoff_len)
    directory = Path(cache_root) / "data" / key
    error = None
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not _is_whole(directory):
        try:
            _prepare(source, tokenizer, loss, cutoff_len, directory, num_proc)
        except Exception as caught:  # raised below on every rank, rather than leaving the others waiting
            error = caught
    raise_if_any_rank_failed(error)  # also the barrier: the files are whole once it returns
    summary = json.loads((directory / COMPLETE).read_text(encoding="utf-8"))
    rejection_log = rejection_log if rejection_log is not None else RejectionLog()
    rejected_before = Counter(rejection_log.reasons)
    with (directory / "rejected.jsonl").open(encoding="utf-8") as rejected:
        for line in rejected:
            entry = json.loads(line)
            rejection_log.reject(entry["source"], entry["reason"], entry["record"])
    stats = DataStats(str(source), records=summary["records"], examples=summary["examples"],
                      truncated=summary["truncated"], rejected=rejection_log.reasons - rejected_before)
    if not stats.examples:
        raise DataError(f"{source}: no usable examples ({stats.records} records, all rejected)")
    table = datasets.concatenate_datasets([datasets.Dataset.from_file(str(directory / name))
                                           for name in summary["tables"]])
    if len(table) != stats.examples:  # the rows of rejected records hold a reason and no sequences
        table = table.select(_positions(table, rejected=False), keep_in_memory=True)  # no file in the cache
    return PreparedExamples(table.select_columns(["sequences"]), loss, key), stats


def _is_whole(directory: Path) -> bool:
    """A prepared directory written to the end and unchanged since: its marker lists the digest of every file
    (a damaged or half-written cache is prepared again; reading a damaged Arrow file could crash)."""
    try:
        written = json.loads((directory / COMPLETE).read_text(encoding="utf-8"))["files"]
        return written == _file_digests(directory)
    except (OSError, ValueError, KeyError):
        return False


def _file_digests(directory: Path) -> dict[str, str]:
    """The sha256 of every file of a prepared directory but its marker."""
    return {str(file.relative_to(directory)): hash_file(hashlib.sha256(), file).hexdigest()
            for file in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE)}


def cache_key(path: str | Path | DataSource, tokenizer, loss: str, cutoff_len: int) -> str:
    """A digest of everything that decides the prepared examples (a Hub data set: its name and split)."""
    digest = hashlib.sha256(resolve_source(path).fingerprint())
    settings = {"format": FORMAT_VERSION, "loss": loss, "cutoff_len": cutoff_len,
                "tokenizer": tokenizer.name_or_path, "vocabulary": len(tokenizer),
                "backend": _backend_digest(tokenizer),
                "special_tokens": tokenizer.special_tokens_map, "chat_template": tokenizer.chat_template}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def _prepare(source: DataSource, tokenizer, loss: str, cutoff_len: int, directory: Path, num_proc: int) -> None:
    """Tokenize `source` into `directory`, written whole or not at all (a kill leaves no marker).

    The records' texts go to an Arrow file first, so that the workers parse them, and memory-map their
    shares rather than receive copies; their output is one row per example, or per rejected record (its
    reason, no sequences).
    """
    with staged_folder(directory) as staging:
        _prepare_into(staging, source, tokenizer, loss, cutoff_len, num_proc)
        # Another node sharing the file system may have finished meanwhile: its ranks read its files.
        publish(staging, directory, _is_whole)


def _prepare_into(staging: Path, source: DataSource, tokenizer, loss: str, cutoff_len: int, num_proc: int) -> None:
    records = _write_records(source, staging / "records.arrow")
    if not len(records):
        raise DataError(f"{source}: no records")
    try:
        tokenized = _tokenize(records, source, ChatEncoder(tokenizer, fast=True), loss, cutoff_len, num_proc,
                              staging / "fast.arrow")
    except (SpliceMismatch, EncodingMismatch):  # a fast path the probes did not catch: the plain way instead
        tokenized = _tokenize(records, source, ChatEncoder(tokenizer), loss, cutoff_len, num_proc,
                              staging / "plain.arrow")
    rejected = _positions(tokenized, rejected=True)
    with (staging / "rejected.jsonl").open("w", encoding="utf-8") as file:
        for position in rejected:
            row = tokenized[position]
            entry = records[row["row"]]
            record, _ = parse_record_text(entry["record"], source.columns)
            file.write(json.dumps({"source": entry["source"], "reason": row["reason"], "record": record},
                                  ensure_ascii=False) + "\n")
    tables = [Path(cache["filename"]) for cache in tokenized.cache_files]
    summary = {"records": len(records), "examples": len(tokenized) - len(rejected),
               "truncated": pc.sum(tokenized.data.column("truncated")).as_py() or 0,
               "tables": [table.name for table in tables]}
    for file in staging.iterdir():  # the records, and what a failed spliced attempt left
        if file not in tables and file.name != "rejected.jsonl":
            file.unlink()
    summary["files"] = _file_digests(staging)
    (staging / COMPLETE).write_text(json.dumps(summary) + "\n", encoding="utf-8")


def _write_records(source: DataSource, path: Path):
    """The records of `source` as a memory-mapped data set of (source: file and line, record: its JSON bytes),
    written in blocks, so that memory does not grow with the data; JSON Lines are copied, not parsed."""
    import datasets

    schema = pa.schema([("source", pa.string()), ("record", pa.binary())])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        texts = record_texts(source)
        while block := list(itertools.islice(texts, RECORDS_PER_BLOCK)):
            columns = [pa.array([where for where, _ in block], pa.string()), pa.array([text for _, text in block], pa.binary())]
            writer.write_batch(pa.record_batch(columns, schema=schema))
    return datasets.Dataset.from_file(str(path))


def _tokenize(records, source: DataSource, encoder: ChatEncoder, loss: str, cutoff_len: int, num_proc: int,
              table: Path):
    """`records` tokenized by worker processes into Arrow files named after `table` (one per worker)."""
    import datasets

    return records.map(
        functools.partial(_tokenize_batch, columns=source.columns, encoder=encoder, loss=loss, cutoff_len=cutoff_len),
        batched=True, batch_size=BATCH_SIZE, with_indices=True, num_proc=_workers(num_proc, len(records)),
        remove_columns=records.column_names, cache_file_name=str(table),
        desc=f"tokenizing {source} ({encoder.method})",
        load_from_cache_file=False,
        features=datasets.Features({
            "row": datasets.Value("int64"), "reason": datasets.Value("string"), "truncated": datasets.Value("bool"),
            "sequences": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        }),
    )


def _positions(table, rejected: bool) -> list[int]:
    """The positions of the rows of rejected records (or of the examples) in a tokenized table."""
    reasons = table.data.column("reason")
    return pc.indices_nonzero(pc.not_equal(reasons, "") if rejected else pc.equal(reasons, "")).to_pylist()


def _backend_digest(tokenizer) -> str | None:
    """A digest of the whole tokenizer (vocabulary, merges, normalizer) where it has a Rust backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return hashlib.sha256(backend.to_str().encode()).hexdigest() if backend is not None else None


def _workers(num_proc: int, num_records: int) -> int | None:
    """Worker processes for `num_records` (None: this process); `num_proc` 0 is one per CPU core."""
    workers = min(num_proc or len(os.sched_getaffinity(0)), num_records // MIN_RECORDS_PER_WORKER)
    return workers if workers > 1 else None


def _tokenize_batch(batch: dict, rows: list[int], columns: dict[str, str], encoder: ChatEncoder, loss: str,
                    cutoff_len: int) -> pa.Table:
    """One output row per example, or per rejected record (with its reason), as `load_examples` forms them;
    the texts of the whole batch are tokenized in one call."""
    output = {"row": [], "reason": [], "truncated": [], "sequences": []}

    def add(row, reason="", truncated=False, sequences=()):
        for column, value in zip(output, (row, reason, truncated, sequences)):
            output[column].append(value)

    parsed = []  # (row, its TextExamples, or the reason it is rejected)
    for row, source, text in zip(rows, batch["source"], batch["record"]):
        record, problem = parse_record_text(text, columns)
        try:
            parsed.append((row, problem or _parse_record(source, record, loss)))
        except _Rejected as rejection:
            parsed.append((row, str(rejection)))
    texts = [text for _, outcome in parsed if not isinstance(outcome, str) for text in outcome]
    encoded = iter(encoder.encode_many([c for text in texts for c in conversations(text)]))

    for row, outcome in parsed:
        if isinstance(outcome, str):
            add(row, outcome)
            continue
        try:
            # Every conversation's ids are taken before a rejection, so the next record reads its own.
            pieces = [(text, [next(encoded) for _ in conversations(text)]) for text in outcome]
            examples = [assemble(text, ids, cutoff_len) for text, ids in pieces]
        except _Rejected as rejection:
            add(row, str(rejection))
            continue
        for example, truncated in examples:
            add(row, truncated=truncated, sequences=_fields(example))
    output["sequences"] = _nested_int32(output["sequences"])
    return pa.table(output)


def _nested_int32(rows: list[list[list[int]]]) -> pa.Array:
    """The rows' token-id lists as an Arrow list<list<int32>> array, built from flat NumPy buffers (ten times
    faster than from the nested Python lists)."""
    lists = [ids for row in rows for ids in row]
    inner = _offsets(map(len, lists), len(lists))
    values = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(inner[-1]))
    return pa.ListArray.from_arrays(_offsets(map(len, rows), len(rows)), pa.ListArray.from_arrays(inner, values))


def _offsets(lengths, count: int) -> np.ndarray:
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(np.fromiter(lengths, dtype=np.int32, count=count), out=offsets[1:])
    return offsets


def _fields(example: Example) -> list[list[int]]:
    """The example's token-id lists, in the order of its constructor's arguments."""
    return [getattr(example, field.name) for field in dataclasses.fields(example)]


def dataset_names(datasets: str | None) -> list[str]:
    """The data sets of a comma-separated `dataset` or `eval_dataset` setting."""
    return [name.strip() for name in datasets.split(",")] if datasets else []


def load_datasets(datasets: str | None, dataset_dir: str | None, tokenizer, cache_root: Path, *, loss: str,
                  cutoff_len: int, rejection_log: RejectionLog, num_proc: int, seed: int,
                  proportions: list[float] | None = None, log=print) -> Sequence[Example]:
    """The examples of the comma-separated data sets `datasets` (none: an empty list), each prepared once
    (`prepared_examples`); several, or one with `proportions`, are mixed (`MixedExamples`)."""
    names = dataset_names(datasets)
    parts = []
    for name in names:
        examples, stats = prepared_examples(resolve_source(name, dataset_dir), tokenizer, cache_root, loss=loss,
                                            cutoff_len=cutoff_len, rejection_log=rejection_log, num_proc=num_proc)
        log(f"data: {stats.summary(rejection_log)}")
        parts.append(examples)
    if len(parts) > 1 or proportions is not None:
        parts = [MixedExamples(parts, proportions, seed)]
        log(f"data: {len(parts[0])} examples mixed from {', '.join(names)}")
    return parts[0] if parts else []
