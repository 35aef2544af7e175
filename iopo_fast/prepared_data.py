"""Tokenized data sets prepared once, in parallel, and cached as Arrow files that every rank memory-maps.

`prepared_examples(path, tokenizer, ...)` gives the same examples, statistics and rejections as
`data.load_examples` (its one-process twin, which the tests compare it with), but:

- the records are validated, chat-templated and tokenized by `datasets`' batched `map` over
  `num_proc` worker processes;
- the result is saved under `<cache>/data/<key>/`, the key a digest of the data file's bytes, the
  tokenizer (its name, vocabulary size, special tokens and chat template), `cutoff_len` and the loss
  mode, so that a second start or a resume reads it instead of tokenizing again. An edited file or
  another tokenizer gives another key; a directory without its completion marker (a preparation
  killed half-way), or whose files no longer match the digests the marker lists, is never read, and
  is rebuilt;
- under several ranks, local rank 0 of each node prepares while the others wait, then all of them
  memory-map the same files rather than each holding its own copy of the token lists.

The rejected records are kept with the cache, so a cached start reports them (file, line, reason)
exactly as the first one did. `MixedExamples` draws from several prepared data sets in fixed proportions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import socket
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from .data import ChatEncoder, DataStats, RejectionLog, _parse_record, _Rejected, assemble, conversations
from .distributed import barrier
from .packing import DPOExample, Example, IOPOExample, SFTExample
from .sources import DataError, DataSource, check_source, hash_file, read_records, resolve_source

MIN_RECORDS_PER_WORKER = 100  # below it a worker process costs more than it saves
# Bump when the prepared columns or the tokenization policy change: older caches are then not read.
FORMAT_VERSION = 2
COMPLETE = "complete.json"  # written last: its presence means the directory is whole


class PreparedExamples(Sequence):
    """The examples of a prepared data set, read from its memory-mapped Arrow table as they are indexed."""

    def __init__(self, dataset, loss: str):
        self.dataset = dataset
        self.example_type = {"iopo": IOPOExample, "dpo": DPOExample, "sft": SFTExample}[loss]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Example:
        return self.example_type(*self.dataset[int(index)]["sequences"])


class MixedExamples(Sequence):
    """Examples drawn from several data sets in fixed proportions (`interleave_probs`), none repeated.

    Each data set's examples are taken in a seeded random order; the mixture is as large as the proportions
    allow without repeating an example (the data set that runs out first bounds it, LLaMA-Factory's
    `interleave_under`), and without proportions it is every example of every data set.
    """

    def __init__(self, parts: list[Sequence[Example]], proportions: list[float] | None = None, seed: int = 0):
        if proportions is None:
            counts = [len(part) for part in parts]
        else:
            total = min(len(part) / share for part, share in zip(parts, proportions))
            counts = [int(share * total + 1e-9) for share in proportions]  # 0.3 * 100 is 29.999...
        self.parts = parts
        self.index = []  # (part, position) of every example of the mixture
        for number, (part, count) in enumerate(zip(parts, counts)):
            order = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed * 1_000_003 + number))
            self.index += [(number, int(position)) for position in order[:count]]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Example:
        part, position = self.index[index]
        return self.parts[part][position]


def prepared_examples(path: str | Path | DataSource, tokenizer, cache_root: str | Path, loss: str = "iopo",
                      cutoff_len: int = 1024, rejection_log: RejectionLog | None = None,
                      num_proc: int = 1) -> tuple[PreparedExamples, DataStats]:
    """The examples of `path`, prepared into `cache_root` if they are not there yet (see the module docstring)."""
    import datasets

    source = resolve_source(path)
    check_source(source)
    directory = Path(cache_root) / "data" / cache_key(source, tokenizer, loss, cutoff_len)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not _is_whole(directory):
        _prepare(source, tokenizer, loss, cutoff_len, directory, num_proc)
    barrier()
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
    table = datasets.load_from_disk(str(directory / "examples"))
    return PreparedExamples(table, loss), stats


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
    """Tokenize `source` into `directory`, written whole or not at all (a kill leaves no marker)."""
    import datasets

    ChatEncoder(tokenizer)  # a tokenizer without a chat template fails here, once, not in every worker
    records = {"source": [], "record": [], "problem": []}
    for where, record, problem in read_records(source):
        records["source"].append(where)
        records["record"].append(record if problem else json.dumps(record, ensure_ascii=False, default=str))
        records["problem"].append(problem)
    raw = datasets.Dataset.from_dict(records)
    del records
    staging = directory.with_name(f".{directory.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # The token lists go to Arrow files in the staging directory, memory-mapped rather than held here.
    tokenized = raw.map(
        functools.partial(_tokenize_batch, tokenizer=tokenizer, loss=loss, cutoff_len=cutoff_len),
        batched=True, batch_size=64, num_proc=_workers(num_proc, len(raw)),
        remove_columns=raw.column_names, desc=f"tokenizing {source}",
        cache_file_name=str(staging / "tokenized.arrow"),
        features=datasets.Features({
            "source": datasets.Value("string"), "reason": datasets.Value("string"),
            "record": datasets.Value("string"), "truncated": datasets.Value("bool"),
            "sequences": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        }),
    )
    good = tokenized.filter(lambda reason: not reason, input_columns="reason",
                            cache_file_name=str(staging / "good.arrow"))
    rejected = tokenized.filter(lambda reason: bool(reason), input_columns="reason",
                                cache_file_name=str(staging / "rejected.arrow"))
    good.select_columns(["sequences"]).save_to_disk(str(staging / "examples"))
    with (staging / "rejected.jsonl").open("w", encoding="utf-8") as file:
        for row in rejected:
            record = row["record"]
            if not row["reason"].startswith("invalid JSON"):
                record = json.loads(record)
            file.write(json.dumps({"source": row["source"], "reason": row["reason"], "record": record},
                                  ensure_ascii=False) + "\n")
    summary = {"records": len(raw), "examples": len(good), "truncated": sum(good["truncated"])}
    for intermediate in staging.glob("*.arrow"):
        intermediate.unlink()
    summary["files"] = _file_digests(staging)
    (staging / COMPLETE).write_text(json.dumps(summary) + "\n", encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)  # a half-written earlier attempt
    os.replace(staging, directory)


def _backend_digest(tokenizer) -> str | None:
    """A digest of the whole tokenizer (vocabulary, merges, normalizer) where it has a Rust backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return hashlib.sha256(backend.to_str().encode()).hexdigest() if backend is not None else None


def _workers(num_proc: int, num_records: int) -> int | None:
    """Worker processes for `num_records` (None: this process); `num_proc` 0 is one per CPU core."""
    workers = min(num_proc or len(os.sched_getaffinity(0)), num_records // MIN_RECORDS_PER_WORKER)
    return workers if workers > 1 else None


def _tokenize_batch(batch: dict, tokenizer, loss: str, cutoff_len: int) -> dict:
    """One output row per example, or per rejected record (with its reason), as `load_examples` forms them;
    the texts of the whole batch are tokenized in one call."""
    encoder = ChatEncoder(tokenizer)
    rows = {"source": [], "reason": [], "record": [], "truncated": [], "sequences": []}

    def add(source, reason="", record="", truncated=False, sequences=()):
        for column, value in zip(rows, (source, reason, record, truncated, list(sequences))):
            rows[column].append(value)

    parsed = []  # (source, record, its TextExamples, or the reason it is rejected)
    for source, record, problem in zip(batch["source"], batch["record"], batch["problem"]):
        try:
            parsed.append((source, record, problem or _parse_record(source, json.loads(record), loss)))
        except _Rejected as rejection:
            parsed.append((source, record, str(rejection)))
    texts = [text for _, _, outcome in parsed if not isinstance(outcome, str) for text in outcome]
    encoded = iter(encoder.encode_many([c for text in texts for c in conversations(text)]))

    for source, record, outcome in parsed:
        if isinstance(outcome, str):
            add(source, outcome, record)
            continue
        try:
            # Every conversation's ids are taken before a rejection, so the next record reads its own.
            pieces = [(text, [next(encoded) for _ in conversations(text)]) for text in outcome]
            examples = [assemble(text, ids, cutoff_len) for text, ids in pieces]
        except _Rejected as rejection:
            add(source, str(rejection), record)
            continue
        for example, truncated in examples:
            add(source, truncated=truncated, sequences=_fields(example))
    return rows


def _fields(example: Example) -> list[list[int]]:
    """The example's token-id lists, in the order of its constructor's arguments."""
    return [getattr(example, field.name) for field in dataclasses.fields(example)]
