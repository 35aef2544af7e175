"""`build-instructions` at scale: records per second against the concurrency bound, and peak memory.

The endpoint is an oracle in its own process (`_oracle_server`) that answers every step of TRACE's
construction the way a good generator and judge would: it adds three constraints to each simple
instruction (a keyword, which a program checks; a friendly tone, which the judge scores; a word limit,
checked by program), structures them as JSON, accepts them in review, writes a response that meets them
and scores the tone 10. So every record goes through every stage, five requests each (three for the 1% set
apart for evaluation), and the figures measure the pipeline: the client, the cache, the checks, the writes.

The bound: with `c` requests in flight and `l` seconds per answer, no pipeline passes `c / l` requests per
second, so `c / (l * requests per record)` records per second. For each size in --records, in a fresh
process (so that peak memory is its own): the first run, a rerun of the finished folder, and a run whose
outputs were deleted but whose request cache was kept.

    python benchmarks/bench_build_instructions.py [--records 12000 120000] [--concurrency 64] [--latency 0.05]
        [--output-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from _oracle_server import add_arguments, memory_table, serve, start, three_runs
from _results import cpu_name, versions, write_results

from iopo_fast.endpoints.client import EndpointSettings
from iopo_fast.instructions.build import OUTPUTS, build_instructions

TOPICS = ("tea", "rivers", "bicycles", "libraries", "volcanoes", "gardens", "trains", "bread")
ANSWER = "Happy to help, friend: {keyword} is a lovely subject, and there is much to enjoy about it."


def write_simple_instructions(path: Path, count: int) -> None:
    with path.open("w") as file:
        for number in range(count):
            file.write(json.dumps({"prompt": f"Write about {TOPICS[number % len(TOPICS)]} (request {number})."}) + "\n")


def oracle_answer(content: str) -> str:
    """The answer of a good generator and judge to each step's prompt (`iopo_fast/instructions/prompts/`)."""
    if content.startswith("You make instructions more complex"):
        simple = content.split("[Simple instruction]\n", 1)[1].split("\n\n", 1)[0]
        keyword = re.search(r"about (\w+)", simple).group(1)
        return (f"{simple}\n1. Include the keyword {keyword}.\n2. Use a friendly tone.\n"
                f"3. Answer in fewer than 60 words.")
    if content.startswith("Split the instruction"):
        keyword = re.search(r"Include the keyword (\w+)", content).group(1)
        task = content.split("[Instruction]\n", 1)[1].split("\n1. ", 1)[0]
        return json.dumps({"task": task, "input": None, "constraints": [
            {"constraint": f"Include the keyword {keyword}.", "dimension": "Inclusion",
             "check": {"id": "keywords:existence", "kwargs": {"keywords": [keyword]}}},
            {"constraint": "Use a friendly tone.", "dimension": "Tone and Style", "check": None},
            {"constraint": "Answer in fewer than 60 words.", "dimension": "Numerical",
             "check": {"id": "length_constraints:number_words", "kwargs": {"num_words": 60, "relation": "less than"}}},
        ]})
    if content.startswith("You check the quality"):
        return '{"acceptable": true, "problems": []}'
    if content.startswith("You are a strict and fair judge"):
        return 'Explanation: it is friendly.\nFine Grained Score: [{"Use a friendly tone.": 10}]\n' \
               "Constraints Overall Score: [[10]]"
    keyword = re.search(r"Include the keyword (\w+)", content)
    return ANSWER.format(keyword=keyword.group(1) if keyword else "it")


def measure(records: int, endpoint: EndpointSettings) -> dict:
    """The three runs on `records` records, in this process."""
    return three_runs(records, write_simple_instructions,
                      lambda source, output: build_instructions(str(source), output, endpoint, log=lambda _: None),
                      tuple(OUTPUTS.values()))


def summarized(result: dict, bound: float) -> dict:
    """One size's figures: per run, its time, rate (and its share of the bound), records kept and requests sent."""
    runs = {}
    for name, run in result["runs"].items():
        report = run["report"]
        rate = result["records"] / run["seconds"]
        requests = sum(count for kind, count in report["this_run"]["requests"].items() if kind.endswith("(asked)"))
        runs[name] = {"seconds": run["seconds"], "records_per_second": rate,
                      "share_of_bound": rate / bound if requests else None,  # the bound is the endpoint's
                      "kept": report["kept"], "dropped": sum(sum(r.values()) for r in report["dropped"].values()),
                      "requests": requests}
    return {"records": result["records"], "peak_rss_mib": result["peak_rss_mib"], "cache_mib": result["cache_mib"],
            "runs": runs}


def table(results: list[dict]) -> list[str]:
    lines = ["| records | run | seconds | records/s | share of the bound | kept (train, eval) | dropped | requests sent |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        for name, run in result["runs"].items():
            kept = f"{run['kept'].get('train', 0)}, {run['kept'].get('eval', 0)}"
            share = "-" if run["share_of_bound"] is None else f"{run['share_of_bound']:.2f}"
            lines.append(f"| {result['records']} | {name} | {run['seconds']:.1f} | {run['records_per_second']:.0f} | "
                         f"{share} | {kept} | {run['dropped']} | {run['requests']} |")
    return lines + memory_table(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--output-dir", type=Path, help="where to write build-instructions-cpu.md and .json "
                                                        "(default: nowhere)")
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.latency, oracle_answer)
    if args.one:
        endpoint = EndpointSettings(args.url, "oracle", concurrency=args.concurrency, max_tokens=256)
        print(json.dumps(measure(args.one, endpoint)))
        return

    bound = args.concurrency / (args.latency * 5) if args.latency else float("inf")
    server, url = start(__file__, args.latency)
    try:
        results = []
        for records in args.records:
            child = subprocess.run([sys.executable, __file__, "--one", str(records), "--url", url,
                                    "--concurrency", str(args.concurrency)], capture_output=True, text=True, check=True)
            results.append(summarized(json.loads(child.stdout.strip().splitlines()[-1]), bound))
            print(f"{records} records done", file=sys.stderr)
    finally:
        server.terminate()
        server.wait()
    report = {"device": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores", "versions": versions(),
              "command": f"python {shlex.join(sys.argv)}", "latency_seconds": args.latency,
              "concurrency": args.concurrency, "bound_records_per_second": bound, "results": results}
    lines = [
        "# build-instructions at scale: records per second against the concurrency bound, peak memory", "",
        f"- device: {report['device']}; the oracle endpoint runs on the same cores",
        f"- versions: {report['versions']}",
        f"- command: `{report['command']}`",
        f"- endpoint: the TRACE oracle in its own process, {args.latency * 1000:.0f} ms per answer; concurrency "
        f"{args.concurrency}; five requests per record (expand, structure, review, answer, judge): the bound is "
        f"{bound:.0f} records/s", "",
        *table(results),
    ]
    print("\n".join(lines))
    if args.output_dir is not None:
        write_results(args.output_dir, "build-instructions-cpu", lines, report)


if __name__ == "__main__":
    main()
