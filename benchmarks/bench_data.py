"""How long until the first step: tokenizing a TRACE-sized data set the first time, and from the cache.

It writes --records synthetic IOPO records with TRACE's shape (an instruction of about 60 words and
4-5 constraints, x2 with one constraint changed, responses of 150-300 words; deterministic from
--seed) to a JSON Lines file, then measures with the embedded SmolLM2 tokenizer and its chat template:

  - `iopo_fast.data.records.load_examples`, the one-process loader, on the first --baseline-records records
    (its rate, records per second);
  - `iopo_fast.data.prepared.prepared_examples` into an empty cache, with --workers processes (the
    first start);
  - the same call again, reading the cache (every later start and resume), and a pass over every
    example it returns;
  - the encoders alone on the same texts, the part of a first start that no preparation can remove: the
    tokenizer's Rust backend (`encode_batch_fast`, its own threads on every core), and the tiktoken twin
    that preparation uses (one core; the workers divide it among the cores).

Peak memory: the peak resident set of this process and, separately, of its largest worker process.
Run it alone: on a loaded machine the times mean nothing.

    python benchmarks/bench_data.py [--records 120000] [--workers 0] [--baseline-records 2000]
        [--output-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

from _results import cpu_name, versions, write_results

from iopo_fast.data.records import ChatEncoder, load_examples
from iopo_fast.model.loading import DEFAULT_MODEL, load_tokenizer
from iopo_fast.data.prepared import prepared_examples

WORDS = ("water light river stone garden market music window paper story city forest engine cloud field "
         "bridge signal planet letter memory winter season harbor valley mirror candle theory method").split()
CONSTRAINTS = [
    "Answer in exactly {n} sentences.", "Use at most {n} words.", "Include the keyword '{w}'.",
    "Do not use the word '{w}'.", "Write the answer in lowercase.", "End with the phrase 'That is all.'",
    "Give exactly {n} bullet points.", "Wrap the answer in JSON.", "Start with the word '{w}'.",
]


def synthetic_records(count: int, seed: int):
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    def constraint() -> str:
        return rng.choice(CONSTRAINTS).format(n=rng.randint(2, 9), w=rng.choice(WORDS))

    for _ in range(count):
        task, constraints = words(rng.randint(40, 80)) + ".", [constraint() for _ in range(rng.randint(4, 5))]
        changed, position = list(constraints), rng.randrange(len(constraints))
        while changed[position] == constraints[position]:  # x2 must differ from x1
            changed[position] = constraint()
        yield {"x1": " ".join([task, *constraints]), "x2": " ".join([task, *changed]),
               "y1": words(rng.randint(150, 300)) + ".", "y2": words(rng.randint(150, 300)) + "!"}


def encoders_alone(data: Path, tokenizer, chunk: int = 8192) -> tuple[float, float]:
    """Seconds the tokenizer's backend (every core), and its tiktoken twin (one core), take for the prompt
    and response texts of every record of `data` (`chunk` texts at a time: the encodings of all of them
    would not fit in memory)."""
    encoder, backend_seconds, twin_seconds = ChatEncoder(tokenizer, fast=True), 0.0, 0.0
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # `datasets` turns it off for its workers, and leaves it off
    with data.open() as lines:
        conversations = ((record[prompt], record[response]) for line in lines for record in [json.loads(line)]
                         for prompt, response in (("x1", "y1"), ("x2", "y2")))
        while block := list(itertools.islice(conversations, chunk // 2)):
            texts = [text for prompt, response in block for text in encoder.spliced_texts(None, prompt, response)]
            start = time.perf_counter()
            tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            backend_seconds += time.perf_counter() - start
            start = time.perf_counter()
            for text in texts:
                encoder.twin.encode(text)
            twin_seconds += time.perf_counter() - start
    return backend_seconds, twin_seconds


def peak_gib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 2**20  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=120_000)
    parser.add_argument("--workers", type=int, default=0, help="preprocessing_num_workers (0: one per core)")
    parser.add_argument("--baseline-records", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=None, help="where to write the results (default: nowhere)")
    args = parser.parse_args()
    tokenizer = load_tokenizer(DEFAULT_MODEL)

    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "trace-like.jsonl"
        baseline_data = Path(scratch) / "baseline.jsonl"
        with data.open("w") as file, baseline_data.open("w") as baseline:
            for index, record in enumerate(synthetic_records(args.records, args.seed)):
                line = json.dumps(record) + "\n"
                file.write(line)
                if index < args.baseline_records:
                    baseline.write(line)
        start = time.perf_counter()
        load_examples(baseline_data, tokenizer)
        baseline_rate = args.baseline_records / (time.perf_counter() - start)

        start = time.perf_counter()
        examples, stats = prepared_examples(data, tokenizer, Path(scratch) / "cache", num_proc=args.workers)
        first = time.perf_counter() - start
        start = time.perf_counter()
        examples, _ = prepared_examples(data, tokenizer, Path(scratch) / "cache", num_proc=args.workers)
        cached = time.perf_counter() - start
        start = time.perf_counter()
        tokens = sum(len(sequence) for example in examples for sequence in (example.prompt1, example.response1))
        read_all = time.perf_counter() - start
        peaks = peak_gib(resource.RUSAGE_SELF), peak_gib(resource.RUSAGE_CHILDREN)
        backend_alone, twin_alone = encoders_alone(data, tokenizer)

    timings = [
        ("one_process", f"`load_examples`, one process ({args.baseline_records} records)",
         args.baseline_records / baseline_rate, args.baseline_records),
        ("first", f"`prepared_examples`, first start (workers: {args.workers or 'one per core'})", first, args.records),
        ("cached", "`prepared_examples`, from the cache", cached, args.records),
        ("read", "reading every example from the memory-mapped table", read_all, args.records),
        ("backend", "the tokenizer's backend alone on the same texts, every core", backend_alone, args.records),
        ("twin", "its tiktoken twin alone on the same texts, one core", twin_alone, args.records),
    ]
    report = {
        "device": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores", "versions": versions(),
        "command": f"python {shlex.join(sys.argv)}", "records": args.records, "examples": stats.examples,
        "tokens_per_x1_y1": tokens / stats.examples,
        "rows": [{"key": key, "what": what, "seconds": seconds, "records_per_second": count / seconds}
                 for key, what, seconds, count in timings],
        "peak_gib": {"process": peaks[0], "largest_worker": peaks[1]},
    }
    lines = [
        "# Tokenizing a TRACE-sized data set: first start and cached start", "",
        f"- device: {report['device']}",
        f"- versions: {report['versions']}",
        f"- command: `{report['command']}`",
        f"- data: {args.records} synthetic IOPO records (instructions of 40-80 words and 4-5 constraints, responses "
        f"of 150-300 words), SmolLM2 tokenizer and chat template; {stats.examples} examples, "
        f"{report['tokens_per_x1_y1']:.0f} tokens per (x1, y1) on average", "",
        "| what | seconds | records/s |", "|---|---|---|",
        *(f"| {row['what']} | {row['seconds']:.3g} | {row['records_per_second']:.0f} |" for row in report["rows"]),
        "",
        f"Peak resident memory (before the encoders alone): this process {peaks[0]:.2f} GiB, its largest worker "
        f"{peaks[1]:.2f} GiB.",
    ]
    print("\n".join(lines))
    if args.output_dir is not None:
        write_results(args.output_dir, "data-cpu", lines, report)
        print(f"wrote {args.output_dir / 'data-cpu.md'} and .json")


if __name__ == "__main__":
    main()
