"""Records to token ids: formats, the chat-template split, truncation, and every kind of bad input."""

from __future__ import annotations

import json

import pytest

from iopo_fast import DPOExample, IOPOExample, SFTExample
from iopo_fast.data.records import MIN_PROMPT_TOKENS, DataError, RejectionLog, load_examples

GOOD = [
    {"x1": f"Describe topic {i} in lowercase.", "x2": f"Describe topic {i} in UPPERCASE.",
     "y1": f"topic {i} is nice.", "y2": f"TOPIC {i} IS NICE."}
    for i in range(5)
]

DPO_RECORD = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}


def original_format(record: dict) -> dict:
    return {
        "conversations": [{"from": "human", "value": record["x1"]}, {"from": "human", "value": record["x2"]}],
        "chosen": {"from": "gpt", "value": record["y1"]},
        "rejected": {"from": "gpt", "value": record["y2"]},
    }


def write_lines(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_all_iopo_formats_give_the_same_examples(tmp_path, smollm2_tokenizer):
    flat = write_lines(tmp_path / "flat.jsonl", [json.dumps(r) for r in GOOD])
    original = write_lines(tmp_path / "original.jsonl", [json.dumps(original_format(r)) for r in GOOD])
    array = tmp_path / "array.json"
    array.write_text(json.dumps([original_format(r) for r in GOOD], indent=2))
    loaded = [load_examples(path, smollm2_tokenizer)[0] for path in (flat, original, array)]
    assert loaded[0] == loaded[1] == loaded[2]
    assert all(isinstance(example, IOPOExample) for example in loaded[0])


def test_prompt_and_response_split_follows_the_chat_template(tmp_path, smollm2_tokenizer):
    record = dict(GOOD[0], system="Be brief.")
    (example,), _ = load_examples(write_lines(tmp_path / "d.jsonl", [json.dumps(record)]), smollm2_tokenizer)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": record["x1"]}]
    prompt_text = smollm2_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert smollm2_tokenizer.decode(example.prompt1) == prompt_text
    assert prompt_text.endswith("<|im_start|>assistant\n")
    assert smollm2_tokenizer.decode(example.response1) == record["y1"] + "<|im_end|>"
    assert example.response1[-1] == smollm2_tokenizer.eos_token_id
    assert smollm2_tokenizer.decode(example.response2) == record["y2"] + "<|im_end|>"


def pair_and_quadruple(tmp_path):
    """A file of one DPO record and one IOPO record."""
    return write_lines(tmp_path / "d.jsonl", [json.dumps(DPO_RECORD), json.dumps(GOOD[0])])


def test_dpo_mode_reads_pairs_and_splits_iopo_records_into_two_pairs(tmp_path, smollm2_tokenizer):
    path = pair_and_quadruple(tmp_path)
    examples, stats = load_examples(path, smollm2_tokenizer, loss="dpo")
    assert stats.records == 2 and len(examples) == 3
    assert all(isinstance(example, DPOExample) for example in examples)
    (iopo,), _ = load_examples(write_lines(tmp_path / "i.jsonl", [json.dumps(GOOD[0])]), smollm2_tokenizer)
    assert examples[1] == DPOExample(iopo.prompt1, iopo.response1, iopo.response2)
    assert examples[2] == DPOExample(iopo.prompt2, iopo.response2, iopo.response1)


def test_sft_mode_keeps_each_instructions_own_response(tmp_path, smollm2_tokenizer):
    examples, stats = load_examples(pair_and_quadruple(tmp_path), smollm2_tokenizer, loss="sft")
    assert stats.records == 2 and len(examples) == 3
    (pair,), _ = load_examples(write_lines(tmp_path / "p.jsonl", [json.dumps(DPO_RECORD)]), smollm2_tokenizer,
                               loss="dpo")
    (iopo,), _ = load_examples(write_lines(tmp_path / "i.jsonl", [json.dumps(GOOD[0])]), smollm2_tokenizer)
    assert examples == [SFTExample(pair.prompt, pair.chosen), SFTExample(iopo.prompt1, iopo.response1),
                        SFTExample(iopo.prompt2, iopo.response2)]


EXTRA_KEYS = {"constraints": ["greet"], "constraint_types": ["Content"], "instruction_id_list": ["x"], "kwargs": [{}]}
# Each SFT record format, holding DPO_RECORD's prompt and chosen response.
SFT_RECORDS = {
    "prompt/response": {"prompt": "Say hi.", "response": "Hi!"},
    "instruction/output": {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    "user/assistant messages": {"messages": [{"role": "user", "content": "Say hi."},
                                             {"role": "assistant", "content": "Hi!"}]},
    "human/gpt conversations": {"conversations": [{"from": "human", "value": "Say hi."},
                                                  {"from": "gpt", "value": "Hi!"}]},
}


def sft_example_of_dpo_record(tmp_path, smollm2_tokenizer, record: dict = DPO_RECORD) -> SFTExample:
    (example,), _ = load_examples(write_lines(tmp_path / "dpo.jsonl", [json.dumps(record)]), smollm2_tokenizer,
                                  loss="sft")
    return example


@pytest.mark.parametrize("form", SFT_RECORDS)
def test_sft_record_gives_the_example_of_a_dpo_records_chosen_response(tmp_path, smollm2_tokenizer, form):
    path = write_lines(tmp_path / "sft.jsonl", [json.dumps({**SFT_RECORDS[form], **EXTRA_KEYS})])
    examples, stats = load_examples(path, smollm2_tokenizer, loss="sft", rejection_log=RejectionLog(strict=True))
    assert stats.records == 1
    assert examples == [sft_example_of_dpo_record(tmp_path, smollm2_tokenizer)]


def test_alpaca_input_follows_the_instruction_after_a_blank_line(tmp_path, smollm2_tokenizer):
    record = {"instruction": "Say hi.", "input": "To Ann.", "output": "Hi!"}
    examples, _ = load_examples(write_lines(tmp_path / "sft.jsonl", [json.dumps(record)]), smollm2_tokenizer,
                                loss="sft")
    expected = sft_example_of_dpo_record(tmp_path, smollm2_tokenizer, dict(DPO_RECORD, prompt="Say hi.\n\nTo Ann."))
    assert examples == [expected]


SYSTEM_RECORDS = {
    "system key": {"prompt": "Say hi.", "response": "Hi!", "system": "Be brief."},
    "system message": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                                    {"role": "assistant", "content": "Hi!"}], "system": "Be long."},
    "system turn": {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Say hi."},
                                      {"from": "gpt", "value": "Hi!"}]},
}


@pytest.mark.parametrize("form", SYSTEM_RECORDS)
def test_sft_record_keeps_its_system_prompt(tmp_path, smollm2_tokenizer, form):
    path = write_lines(tmp_path / "sft.jsonl", [json.dumps(SYSTEM_RECORDS[form])])
    (example,), _ = load_examples(path, smollm2_tokenizer, loss="sft", rejection_log=RejectionLog(strict=True))
    assert example == sft_example_of_dpo_record(tmp_path, smollm2_tokenizer, dict(DPO_RECORD, system="Be brief."))
    assert "Be brief." in smollm2_tokenizer.decode(example.prompt)


@pytest.mark.parametrize("loss", ["iopo", "dpo"])
@pytest.mark.parametrize("form", SFT_RECORDS)
def test_sft_record_is_rejected_outside_sft_mode(tmp_path, smollm2_tokenizer, form, loss):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(SFT_RECORDS[form]), json.dumps(GOOD[0])])
    log = RejectionLog()
    examples, stats = load_examples(path, smollm2_tokenizer, loss=loss, rejection_log=log)
    assert len(examples) == {"iopo": 1, "dpo": 2}[loss] and sum(stats.rejected.values()) == 1
    with pytest.raises(DataError) as error:
        load_examples(path, smollm2_tokenizer, loss=loss, rejection_log=RejectionLog(strict=True))
    assert str(error.value) == f"{path}:1: an SFT record ({form}) has one response: train it with loss: sft"


def test_conversations_are_told_apart_by_their_roles(tmp_path, smollm2_tokenizer):
    """Two human turns are the IOPO release's x1 and x2; a human and a gpt turn are an SFT record."""
    chat, iopo = SFT_RECORDS["human/gpt conversations"], original_format(GOOD[0])
    flat = write_lines(tmp_path / "flat.jsonl", [json.dumps(GOOD[0])])
    for loss in ("iopo", "dpo", "sft"):
        expected, _ = load_examples(flat, smollm2_tokenizer, loss=loss)
        loaded, _ = load_examples(write_lines(tmp_path / "i.jsonl", [json.dumps(iopo)]), smollm2_tokenizer, loss=loss,
                                  rejection_log=RejectionLog(strict=True))
        assert loaded == expected
    both = write_lines(tmp_path / "both.jsonl", [json.dumps(iopo), json.dumps(chat)])
    examples, _ = load_examples(both, smollm2_tokenizer, loss="sft", rejection_log=RejectionLog(strict=True))
    assert examples == expected + [sft_example_of_dpo_record(tmp_path, smollm2_tokenizer)]
    (example,), _ = load_examples(both, smollm2_tokenizer, rejection_log=RejectionLog())
    assert isinstance(example, IOPOExample)


BAD = {
    "invalid JSON": ('{"x1": "a", "x2": ', "invalid JSON: Expecting value at column 19"),
    "not an object": ('["x1", "x2"]', "not a JSON object"),
    "missing field": (json.dumps({"x1": "a", "x2": "b", "y1": "c"}), "missing field 'y2'"),
    "non-string field": (json.dumps({"x1": "a", "x2": 3, "y1": "c", "y2": "d"}), "field 'x2' is not a string"),
    "empty prompt": (json.dumps({"x1": "  ", "x2": "b", "y1": "c", "y2": "d"}), "empty field 'x1'"),
    "empty response": (json.dumps(original_format({"x1": "a", "x2": "b", "y1": "c", "y2": ""})), "empty field 'rejected.value'"),
    "x1 identical to x2": (json.dumps({"x1": "same", "x2": "same", "y1": "c", "y2": "d"}), "x1 identical to x2"),
    "y1 identical to y2": (json.dumps({"x1": "a", "x2": "b", "y1": "same", "y2": "same"}), "y1 identical to y2"),
    "cannot fit": (json.dumps({"x1": "a", "x2": "b", "y1": "word " * 200, "y2": "d"}), "cannot fit in cutoff_len=64"),
    "DPO record in IOPO mode": (json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}), "a DPO record"),
    "chat without an answer": (json.dumps({"messages": [{"role": "user", "content": "a"}]}),
                               "'messages' must hold one user turn and one assistant turn"),
    "unrecognised record": (json.dumps({"question": "a"}), "unrecognised record"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_record_is_reported_and_good_records_are_kept(tmp_path, smollm2_tokenizer, case):
    bad_line, reason = BAD[case]
    good_lines = [json.dumps(r) for r in GOOD]
    path = write_lines(tmp_path / "data.jsonl", good_lines[:2] + [bad_line] + good_lines[2:])
    log = RejectionLog(tmp_path / "out" / "rejected_records.jsonl")
    examples, stats = load_examples(path, smollm2_tokenizer, cutoff_len=64, rejection_log=log)

    expected, _ = load_examples(write_lines(tmp_path / "good.jsonl", good_lines), smollm2_tokenizer, cutoff_len=64)
    assert examples == expected
    (rejected,) = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert rejected["source"] == f"{path}:3"
    assert rejected["reason"].startswith(reason)
    assert sum(stats.rejected.values()) == 1
    assert "1 rejected" in stats.summary(log) and str(log.path) in stats.summary(log)

    with pytest.raises(DataError) as error:
        load_examples(path, smollm2_tokenizer, cutoff_len=64, rejection_log=RejectionLog(strict=True))
    assert str(error.value).startswith(f"{path}:3: {reason}")
    assert "\n" not in str(error.value)


def test_rejected_array_record_is_named_by_index(tmp_path, smollm2_tokenizer):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD[0], {"x1": "a"}, GOOD[1]]))
    log = RejectionLog()
    examples, _ = load_examples(path, smollm2_tokenizer, rejection_log=log)
    assert len(examples) == 2
    with pytest.raises(DataError, match=r"data\.json\[1\]: missing field 'x2'"):
        load_examples(path, smollm2_tokenizer, rejection_log=RejectionLog(strict=True))


def test_broken_json_array_names_the_line(tmp_path, smollm2_tokenizer):
    path = tmp_path / "data.json"
    path.write_text('[\n{"x1": "a"},\n{oops}\n]')
    with pytest.raises(DataError, match=r"data\.json:3: invalid JSON array"):
        load_examples(path, smollm2_tokenizer)


def test_nothing_left_after_filtering_is_an_error(tmp_path, smollm2_tokenizer):
    path = write_lines(tmp_path / "data.jsonl", [BAD["x1 identical to x2"][0], "not json"])
    with pytest.raises(DataError, match=r"data\.jsonl: no usable examples \(2 records, all rejected\)"):
        load_examples(path, smollm2_tokenizer)


def test_missing_file_is_an_error(tmp_path, smollm2_tokenizer):
    with pytest.raises(DataError, match="no such data file"):
        load_examples(tmp_path / "absent.jsonl", smollm2_tokenizer)


def test_long_prompts_are_cut_from_the_start_and_responses_kept(tmp_path, smollm2_tokenizer):
    record = {"x1": "filler " * 100 + "Answer in lowercase.", "x2": "Answer in UPPERCASE.", "y1": "ok then", "y2": "OK THEN"}
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(record)])
    (full,), stats = load_examples(path, smollm2_tokenizer, cutoff_len=4096)
    assert stats.truncated == 0
    cutoff = 48
    (cut,), stats = load_examples(path, smollm2_tokenizer, cutoff_len=cutoff)
    assert stats.truncated == 1
    assert cut.response1 == full.response1 and cut.response2 == full.response2
    longest_response = max(len(full.response1), len(full.response2))
    assert cut.prompt1 == full.prompt1[-(cutoff - longest_response):]
    assert cut.prompt2 == full.prompt2  # short enough already
    assert max(len(p) + len(r) for p, r in cut.sequences()) <= cutoff
    assert cutoff - longest_response >= MIN_PROMPT_TOKENS
