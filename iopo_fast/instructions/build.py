"""`build_instructions`: from a file of simple instructions to TRACE-style data, streamed to disk.

In the output folder:

- `instructions.jsonl`: the training split, one record per instruction kept: the instruction with its
  constraints and the response that met them all, as a chat (`messages`) that `iopo-fast train` takes
  with `loss: sft`, and with the constraints that `iopo-fast build-pairs` reads (`constraints` in words,
  `instruction_id_list` and `kwargs` for those a program checks), so IOPO quadruples follow in one more
  command; beside them, for audit, the seed instruction, the expansion, the structure, every verdict
  and the number of tries;
- `eval.jsonl`: the evaluation split, instructions never trained on, in TRACE's released format
  (`iopo-fast eval --benchmarks judge:OUT/eval.jsonl`);
- `eval-checks.jsonl`: the same instructions, with only their constraints that a program checks, in the
  `jsonl:` benchmark's format (`--benchmarks jsonl:OUT/eval-checks.jsonl`), written at the end of a run;
- `dropped.jsonl`, `cache.jsonl`, `input.json` and `report.json` as for `build-pairs` (`pairs.streaming`),
  the report with the distribution of constraints per instruction, types and dimensions in each split.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..endpoints.append_log import complete_lines
from ..evaluation.taxonomy import Taxonomy, load_taxonomy
from ..pairs.streaming import ModelSettings, Pipeline, digest, run, summary
from ..utils import write_atomically
from .builder import EVAL, STAGES, TRAIN, InstructionBuilder
from .plan import Plan, load_plan
from .prompts import PROMPTS

OUTPUTS = {TRAIN: "instructions.jsonl", EVAL: "eval.jsonl"}
LAST_STAGES = {TRAIN: STAGES[-1], EVAL: "quality"}  # the evaluation split stops after quality control
CHECKED_EVAL = "eval-checks.jsonl"


def build_instructions(dataset: str, output: str | Path, generator: ModelSettings, judge: ModelSettings | None = None,
                       prompts: dict[str, str] | None = None, taxonomy: Taxonomy | None = None,
                       plan: Plan | None = None, seed: int = 0, eval_fraction: float = 0.01, max_tries: int = 3,
                       max_constraints: int = 15, limit: int | None = None, in_flight: int | None = None,
                       log=print) -> dict:
    """Build the training and evaluation splits from the simple instructions of `dataset` (any source the
    trainer reads) into the folder `output`; resumes a run that stopped. The judge defaults to the
    generator; the taxonomy and the plan to TRACE's. Returns the report."""
    taxonomy = taxonomy or load_taxonomy()
    plan = plan or load_plan(None, taxonomy)
    prompts = prompts or dict(PROMPTS)

    def make_builder(generator_chat, judge_chat) -> InstructionBuilder:
        return InstructionBuilder(prompts, generator_chat, judge_chat, taxonomy, plan, seed, eval_fraction,
                                  max_tries, max_constraints)

    output = Path(output)
    settings = {"seed": seed, "eval_fraction": eval_fraction, "max_tries": max_tries,
                "max_constraints": max_constraints, "prompts": digest(prompts), "taxonomy": digest(taxonomy),
                "plan": digest(plan)}
    outputs = {kind: (name, LAST_STAGES[kind]) for kind, name in OUTPUTS.items()}
    report = run(Pipeline("build-instructions", STAGES, outputs, settings, make_builder), dataset, output,
                 generator, judge, limit, in_flight)
    write_checked_split(output / OUTPUTS[EVAL], output / CHECKED_EVAL)
    report["distribution"] = {split: distribution(output / name, taxonomy) for split, name in OUTPUTS.items()}
    write_atomically(output / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    log(summary("build-instructions", report))
    return report


def write_checked_split(evaluation: Path, path: Path) -> None:
    """The evaluation split's constraints that a program checks, as a `jsonl:` benchmark (instructions
    without any are left out)."""
    lines = []
    for _, _, record in complete_lines(evaluation, _is_trace_record):
        if record["checks"]:
            lines.append(json.dumps({"key": record["id"], "prompt": record["messages"][-1]["content"],
                                     "instruction_id_list": [check["id"] for check in record["checks"]],
                                     "kwargs": [check["kwargs"] for check in record["checks"]]}, ensure_ascii=False))
    write_atomically(path, "".join(line + "\n" for line in lines))


def distribution(path: Path, taxonomy: Taxonomy) -> dict:
    """Records, constraints per record, and constraints by type and dimension, of one split's file."""
    per_record, types, dimensions = Counter(), Counter(), Counter()
    for _, _, record in complete_lines(path, lambda entry: isinstance(entry, dict)):
        labels = (record.get("levels2") or
                  [item["dimension"] for item in record.get("structure", {}).get("constraints", [])])
        per_record[len(labels)] += 1
        for label in labels:
            dimension = taxonomy.classify(label)
            types[dimension.type if dimension else "unknown"] += 1
            dimensions[dimension.name if dimension else label] += 1
    records = sum(per_record.values())
    return {"records": records,
            "constraints_per_record": {"mean": (sum(k * v for k, v in per_record.items()) / records) if records else None,
                                       "counts": {str(k): per_record[k] for k in sorted(per_record)}},
            "types": dict(types.most_common()), "dimensions": dict(dimensions.most_common())}


def _is_trace_record(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("checks"), list) and isinstance(entry.get("messages"), list)
