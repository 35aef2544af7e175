"""Prepared data sets: the same examples, statistics and rejections as `load_examples` (the one-process
twin), tokenized in worker processes, cached under a key that changes with what decides them."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import DEMO_DATA, fresh_process_env

import iopo_fast.data.prepared as prepared
from iopo_fast.data.records import DataError, RejectionLog, load_examples
from iopo_fast.config import ConfigError, TrainConfig
from iopo_fast.data.prepared import COMPLETE, cache_key, prepared_examples
from iopo_fast.data.sampling import MixedExamples
from iopo_fast.data.sources import resolve_source

BAD_LINES = ["{broken", json.dumps([1, 2]), json.dumps({"x1": "same", "x2": "same", "y1": "a", "y2": "b"}),
             json.dumps({"x1": "a", "x2": "b", "y1": "c"}), ""]


def mixed_file(tmp_path, count: int):
    """`count` demo records with the bad lines scattered among them (a blank line included)."""
    lines = (DEMO_DATA / "train.jsonl").read_text().splitlines()[:count]
    rng = random.Random(count)
    for bad in BAD_LINES:
        lines.insert(rng.randrange(1, len(lines)), bad)  # after the first: "[1, 2]" first would read as an array
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def rejections(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("loss, num_proc, cutoff_len", [("iopo", 2, 100), ("dpo", 1, 1024), ("sft", 1, 100)])
def test_prepared_examples_equal_load_examples(tmp_path, smollm2_tokenizer, loss, num_proc, cutoff_len):
    """With workers and a cutoff that truncates, and in DPO and SFT modes (two examples per record)."""
    data = mixed_file(tmp_path, 300)
    expected_log, log = RejectionLog(tmp_path / "expected.jsonl"), RejectionLog(tmp_path / "rejected.jsonl")
    expected, expected_stats = load_examples(data, smollm2_tokenizer, loss, cutoff_len, expected_log)

    examples, stats = prepared_examples(data, smollm2_tokenizer, tmp_path / "cache", loss, cutoff_len, log,
                                        num_proc=num_proc)

    assert list(examples) == expected and len(examples) == len(expected)
    assert stats == expected_stats and stats.records == 300 + len(BAD_LINES) - 1
    assert (stats.truncated > 0) == (cutoff_len == 100)
    assert rejections(tmp_path / "rejected.jsonl") == rejections(tmp_path / "expected.jsonl")
    assert [r["source"].split(":")[0] for r in rejections(tmp_path / "rejected.jsonl")] == [str(data)] * 4


def test_a_second_start_reads_the_cache_and_reports_the_same_rejections(tmp_path, smollm2_tokenizer, monkeypatch):
    data = mixed_file(tmp_path, 20)
    first, first_stats = prepared_examples(data, smollm2_tokenizer, tmp_path / "cache",
                                           rejection_log=RejectionLog(tmp_path / "first.jsonl"))
    monkeypatch.setattr(prepared, "_prepare", lambda *args: pytest.fail("tokenized again"))
    second, second_stats = prepared_examples(data, smollm2_tokenizer, tmp_path / "cache",
                                             rejection_log=RejectionLog(tmp_path / "second.jsonl"))
    assert list(second) == list(first) and second_stats == first_stats
    assert rejections(tmp_path / "second.jsonl") == rejections(tmp_path / "first.jsonl")
    first_rejection = rejections(tmp_path / "first.jsonl")[0]
    with pytest.raises(DataError, match=f"^{first_rejection['source']}: "):  # strict mode stops at the first
        prepared_examples(data, smollm2_tokenizer, tmp_path / "cache", rejection_log=RejectionLog(strict=True))


def test_an_edited_record_or_other_settings_are_never_served_from_the_cache(tmp_path, smollm2_tokenizer):
    data = mixed_file(tmp_path, 10)
    cache = tmp_path / "cache"
    before, _ = prepared_examples(data, smollm2_tokenizer, cache)
    key = cache_key(data, smollm2_tokenizer, "iopo", 1024)
    assert cache_key(data, smollm2_tokenizer, "iopo", 512) != key
    assert cache_key(data, smollm2_tokenizer, "dpo", 1024) != key
    other_template = type(smollm2_tokenizer).from_pretrained(smollm2_tokenizer.name_or_path)
    other_template.chat_template = other_template.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert cache_key(data, other_template, "iopo", 1024) != key

    lines = data.read_text().splitlines()
    record = json.loads(lines[0])
    record["chosen"]["value"] += " Edited."
    lines[0] = json.dumps(record)
    data.write_text("\n".join(lines) + "\n")
    after, _ = prepared_examples(data, smollm2_tokenizer, cache)
    assert cache_key(data, smollm2_tokenizer, "iopo", 1024) != key
    assert list(after) == load_examples(data, smollm2_tokenizer)[0] != list(before)


@pytest.mark.parametrize("damage", ["no marker", "truncated table", "garbled table", "no rejections"])
def test_a_half_written_or_damaged_cache_is_rebuilt(tmp_path, smollm2_tokenizer, damage):
    data = mixed_file(tmp_path, 10)
    expected = list(prepared_examples(data, smollm2_tokenizer, tmp_path / "cache")[0])  # read before the damage
    directory = tmp_path / "cache" / "data" / cache_key(data, smollm2_tokenizer, "iopo", 1024)
    table = next(directory.glob("*.arrow"))
    if damage == "no marker":  # killed before the marker was written
        (directory / COMPLETE).unlink()
        table.unlink()
    elif damage == "truncated table":
        table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    elif damage == "garbled table":
        table.write_bytes(b"\0" * table.stat().st_size)
    else:
        (directory / "rejected.jsonl").unlink()
    rebuilt, _ = prepared_examples(data, smollm2_tokenizer, tmp_path / "cache")
    assert list(rebuilt) == expected and (directory / COMPLETE).is_file()


def test_a_cache_another_node_finished_meanwhile_is_left_to_its_readers(tmp_path, smollm2_tokenizer):
    """Two nodes sharing a file system may prepare the same key at once: the second to finish keeps the first's
    files, which the first node's ranks have memory-mapped, and drops its own."""
    data = mixed_file(tmp_path, 10)
    examples, _ = prepared_examples(data, smollm2_tokenizer, tmp_path / "cache")
    directory = tmp_path / "cache" / "data" / cache_key(data, smollm2_tokenizer, "iopo", 1024)
    files = {file: file.stat().st_ino for file in directory.iterdir()}
    prepared._prepare(resolve_source(data), smollm2_tokenizer, "iopo", 1024, directory, 1)  # the other node
    assert {file: file.stat().st_ino for file in directory.iterdir()} == files
    assert [path.name for path in directory.parent.iterdir()] == [directory.name]  # no staging left
    assert list(examples) == load_examples(data, smollm2_tokenizer)[0]


@pytest.mark.parametrize("proportions", [None, [0.25, 0.75]])
def test_mixed_data_sets_keep_their_proportions_and_repeat_nothing(proportions):
    small, large = [f"a{i}" for i in range(30)], [f"b{i}" for i in range(200)]
    mixed = MixedExamples([small, large], proportions, seed=3)
    drawn = list(mixed)
    assert len(set(drawn)) == len(drawn)
    from_small = sum(name.startswith("a") for name in drawn)
    if proportions is None:
        assert sorted(drawn) == sorted(small + large)
    else:  # the small set bounds the mixture: all 30 of it are a quarter, so 90 of the large one
        assert (from_small, len(drawn)) == (30, 120)
    assert drawn != list(MixedExamples([small, large], proportions, seed=4))


def test_proportions_that_round_badly_lose_no_example():
    mixed = MixedExamples([list(range(30)), list(range(70))], [0.3, 0.7])
    assert len(mixed) == 100


@pytest.mark.parametrize("value, message", [("0.5,0.6", "summing to 1"), ("1", "one per dataset"), ("a,b", "numbers")])
def test_bad_interleave_probs_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(dataset="a.jsonl,b.jsonl", interleave_probs=value)


def test_a_file_of_blank_lines_is_an_error_and_caches_nothing(tmp_path, smollm2_tokenizer):
    data = tmp_path / "blank.jsonl"
    data.write_text("\n  \n\u00a0\n")
    with pytest.raises(DataError, match=f"^{data}: no records$"):
        prepared_examples(data, smollm2_tokenizer, tmp_path / "cache")
    assert not any((tmp_path / "cache" / "data").iterdir())


# One rank of `prepared_examples` under torchrun: prints its error as the CLI does, then exits at once (a rank
# still tearing down when torchrun sees the other's exit would be stopped and report another code).
RANK_SCRIPT = """
import os, pathlib, sys
import torch.distributed as dist
from transformers import AutoTokenizer
from iopo_fast.data.prepared import prepared_examples

dist.init_process_group("gloo")
try:
    prepared_examples(sys.argv[1], AutoTokenizer.from_pretrained(sys.argv[2]), sys.argv[3])
except Exception as error:
    # A file per rank: two ranks printing to one pipe can interleave their lines.
    pathlib.Path(sys.argv[4], f"rank-{dist.get_rank()}.txt").write_text(f"{type(error).__name__}: {error}")
    os._exit(3)
"""
TWO_RANK_TIMEOUT = 120  # seconds; the run takes about 25 on two busy cores


def test_a_preparation_failing_on_local_rank_0_stops_every_rank_with_its_error(tmp_path, smollm2_tokenizer):
    """Local rank 0 prepares alone; when that fails, the other rank raises the same one-line error instead of
    waiting at the barrier (a hang fails the test at the timeout)."""
    data = tmp_path / "broken.json"
    data.write_text('[{"x1": "a", "x2": "b", "y1": "c", "y2": "d"}, {')
    smollm2_tokenizer.save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    # --monitor-interval 1: torchrun looks after both ranks have exited, rather than stopping the slower one.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--monitor-interval=1", str(tmp_path / "rank.py"), str(data), str(tmp_path / "tokenizer"),
               str(tmp_path / "cache"), str(tmp_path)]
    started = time.monotonic()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**fresh_process_env(), "HF_HUB_OFFLINE": "1"}, start_new_session=True) as run:
        try:
            stdout, stderr = run.communicate(timeout=TWO_RANK_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)  # torchrun and its ranks: the session it leads
            stdout, stderr = run.communicate()
            pytest.fail(f"hung for {TWO_RANK_TIMEOUT} s:\n{stdout[-3000:]}{stderr[-3000:]}")
    print(f"two ranks: {time.monotonic() - started:.1f} s")

    errors = {path.stem.removeprefix("rank-"): path.read_text() for path in tmp_path.glob("rank-*.txt")}
    assert errors.keys() == {"0", "1"}, stdout[-3000:] + stderr[-3000:]
    assert errors["0"] == errors["1"]
    assert errors["0"].startswith(f"DataError: {data}:1: invalid JSON array: ")
    exit_codes = dict(re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s+exitcode\s*: (-?\d+)", stderr))
    assert run.returncode != 0 and exit_codes == {"0": "3", "1": "3"}, stderr[-3000:]
