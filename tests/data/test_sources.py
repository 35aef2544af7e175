"""Where records come from: every kind of source gives the same examples as the JSON Lines file it holds,
and the sources that cannot be read say so in one line."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from conftest import DEMO_EVAL

from iopo_fast.data.records import DataError, RejectionLog, load_examples
from iopo_fast.data.prepared import cache_key, prepared_examples
from iopo_fast.data.sources import read_records, resolve_source

RECORDS = [json.loads(line) for line in (DEMO_EVAL).read_text().splitlines()[:12]]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    return path


def test_parquet_folder_saved_dataset_and_registry_give_the_jsonl_examples(tmp_path, jsonl, smollm2_tokenizer):
    import datasets

    expected, _ = load_examples(jsonl, smollm2_tokenizer)
    table = datasets.Dataset.from_list(RECORDS)
    table.to_parquet(str(tmp_path / "records.parquet"))
    folder = tmp_path / "folder"
    (folder / "part").mkdir(parents=True)
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:5]))
    (folder / "part" / "b.json").write_text(json.dumps(RECORDS[5:]))
    table.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "saved_dict"))
    # LLaMA-Factory's registry with its own column names, as the original IOPO release ships its data.
    renamed = [{"messages": r["conversations"], "better": r["chosen"], "worse": r["rejected"]} for r in RECORDS]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "trace.json").write_text(json.dumps(renamed))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"trace_iopo": {
        "file_name": "trace.json", "ranking": True, "formatting": "sharegpt",
        "columns": {"messages": "messages", "chosen": "better", "rejected": "worse"}}}))

    for name in ("records.parquet", "folder", "saved", "saved_dict"):
        examples, stats = load_examples(tmp_path / name, smollm2_tokenizer)
        assert examples == expected and stats.records == len(RECORDS), name
    registered = resolve_source("trace_iopo", tmp_path / "data")
    assert load_examples(registered, smollm2_tokenizer)[0] == expected
    prepared, _ = prepared_examples(registered, smollm2_tokenizer, tmp_path / "cache")
    assert list(prepared) == expected


def test_rejections_name_the_row_of_a_parquet_file(tmp_path, smollm2_tokenizer):
    import datasets

    records = RECORDS[:3] + [{**RECORDS[3], "chosen": RECORDS[3]["rejected"]}]
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "r.parquet"))
    log = RejectionLog()
    examples, stats = load_examples(tmp_path / "r.parquet", smollm2_tokenizer, rejection_log=log)
    assert len(examples) == 3 and dict(stats.rejected) == {"y1 identical to y2": 1}
    with pytest.raises(DataError, match=r"r\.parquet\[3\]: y1 identical to y2"):
        load_examples(tmp_path / "r.parquet", smollm2_tokenizer, rejection_log=RejectionLog(strict=True))


def test_a_changed_file_in_a_folder_changes_the_cache_key(tmp_path, smollm2_tokenizer):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")
    key = cache_key(folder, smollm2_tokenizer, "iopo", 1024)
    (folder / "b.jsonl").write_text(json.dumps(RECORDS[1]) + "\n")
    assert cache_key(folder, smollm2_tokenizer, "iopo", 1024) != key


@pytest.mark.parametrize("make, message", [
    (lambda tmp: ("absent.jsonl", None), "absent.jsonl: no such data file or folder"),
    (lambda tmp: ("empty", (tmp / "empty").mkdir()), "empty: a folder without .jsonl, .json, .parquet files"),
    (lambda tmp: ("missing", (tmp / "dataset_info.json").write_text("{}")), "missing: no such data file or folder, "
                                                                            "nor an entry of"),
    (lambda tmp: ("x", (tmp / "dataset_info.json").write_text('{"x": {"hf_hub_url": "a/b"}}')),
     "entry 'x' has no file_name"),
    (lambda tmp: ("x", (tmp / "dataset_info.json").write_text('{"x": {"file_name": "x.json", "columns": {"tools": '
                                                              '"t"}}}')), "maps columns iopo-fast does not read: tools"),
])
def test_unreadable_sources_are_one_line_errors(tmp_path, monkeypatch, smollm2_tokenizer, make, message):
    monkeypatch.chdir(tmp_path)
    name, _ = make(tmp_path)
    dataset_dir = tmp_path if (tmp_path / "dataset_info.json").is_file() else None
    with pytest.raises(DataError, match=message) as error:
        load_examples(resolve_source(name, dataset_dir), smollm2_tokenizer)
    assert "\n" not in str(error.value)


def test_a_hub_name_without_a_network_is_a_one_line_error(tmp_path, monkeypatch, smollm2_tokenizer):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"^someone/some-data: not a local file or folder, and the Hugging Face Hub "
                                        r"data set cannot be loaded \(split 'test'\): ") as error:
        load_examples("someone/some-data:test", smollm2_tokenizer)
    assert "\n" not in str(error.value) and time.perf_counter() - started < 60
    shutil.rmtree(tmp_path / "hf", ignore_errors=True)


def test_a_table_mixing_record_formats_reads_every_row(tmp_path, jsonl, smollm2_tokenizer):
    """A Parquet or Hub table holds every column in every row, None where a record has none."""
    import datasets

    flat = [{"x1": r["conversations"][0]["value"], "x2": r["conversations"][1]["value"], "y1": r["chosen"]["value"],
             "y2": r["rejected"]["value"]} for r in RECORDS[6:]]
    columns = ("conversations", "chosen", "rejected", "x1", "x2", "y1", "y2")
    rows = [{column: record.get(column) for column in columns} for record in RECORDS[:6] + flat]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "mixed.parquet"))
    examples, stats = load_examples(tmp_path / "mixed.parquet", smollm2_tokenizer)
    assert examples == load_examples(jsonl, smollm2_tokenizer)[0] and not stats.rejected


def test_json_lines_are_read_line_by_line_at_newlines_only(tmp_path):
    record = {"prompt": "Say\u2028hi\rthere.", "chosen": "Hi.", "rejected": "No."}  # separators inside a string
    path = tmp_path / "records.jsonl"
    path.write_bytes(json.dumps(record, ensure_ascii=False).encode() + b"\r\n" + b'{"prompt": "caf\xe9"}\n\n'
                     + json.dumps(record).encode())
    rows = list(read_records(resolve_source(str(path))))
    assert [(where, problem) for where, _, problem in rows] == [
        (f"{path}:1", ""), (f"{path}:2", "not UTF-8 text (byte 16)"), (f"{path}:4", "")]
    assert rows[0][1] == rows[2][1] == record
