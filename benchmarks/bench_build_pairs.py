"""`build-pairs` at scale: records per second, where the time goes, and peak memory, against a local endpoint.

The endpoint is an OpenAI-compatible server started here in its own process. By default it is an oracle
for the demo constraints: it answers an instruction with a response built from the demo data's sentences
(`examples/make_demo_data.py`) that meets every constraint the instruction states, after --latency
seconds. So every record goes through every stage (y1 written, checked, x2 made by rule, y2 written,
checked) and the figures measure the pipeline itself: the client, the cache, the checks, the writes. With
--url and --model it runs against a real server instead (vLLM's, `transformers serve`), where the model's
speed decides.

Input: the demo data's instructions (x1 and x2 of every record), each made distinct by a request number, for
--records records without responses. For each size in --records, in a fresh process (so that peak memory
is its own): the first run; a rerun of the finished folder (every record skipped); and a run whose outputs
were deleted but whose request cache was kept (every answer from the cache).

    python benchmarks/bench_build_pairs.py [--records 12000 120000] [--concurrency 64] [--latency 0.05]
        [--url URL --model NAME] [--output-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from _oracle_server import add_arguments, memory_table, serve, start, three_runs
from _results import cpu_name, versions, write_results

from iopo_fast.endpoints.client import EndpointSettings
from iopo_fast.evaluation.demo_constraints import broken, parse_constraints
from iopo_fast.pairs.pipeline import build_pairs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import make_demo_data  # noqa: E402  (the demo data's topics and response builder)


@lru_cache(maxsize=None)
def oracle_responses(instruction_without_number: str) -> tuple[str, ...]:
    """The responses from the demo sentences that meet every constraint `instruction` states."""
    topic = next((t for t in make_demo_data.TOPICS if instruction_without_number.startswith(t.task)), None)
    if topic is None:
        return ()
    constraints = parse_constraints(instruction_without_number)
    return tuple(response for response in make_demo_data.candidate_responses(topic, constraints)
                 if not broken(response, constraints))


def oracle_answer(content: str) -> str:
    """A response from the demo sentences that meets every constraint the instruction states (one of them,
    chosen by the request's text), or "OK" to anything else."""
    responses = oracle_responses(content.rsplit(" (request ", 1)[0])
    digest = int(hashlib.sha256(content.encode()).hexdigest(), 16)
    return responses[digest % len(responses)] if responses else "OK"


def write_instructions(path: Path, count: int) -> None:
    lines = (EXAMPLES / "data" / "train.jsonl").read_text().splitlines()
    instructions = [turn["value"] for record in map(json.loads, lines) for turn in record["conversations"]]
    with path.open("w") as file:
        for number in range(count):
            file.write(json.dumps({"prompt": f"{instructions[number % len(instructions)]} (request {number})"}) + "\n")


def measure(records: int, endpoint: EndpointSettings) -> dict:
    """The three runs on `records` records, in this process."""
    return three_runs(records, write_instructions,
                      lambda source, output: build_pairs(str(source), output, endpoint, log=lambda _: None),
                      ("pairs.jsonl",))


def summarized(result: dict) -> dict:
    """One size's figures as the results file keeps them: per run, its time, rate, records kept, generator
    requests sent, and the seconds waited for the endpoint and spent in the checks."""
    runs = {}
    for name, run in result["runs"].items():
        this_run = run["report"]["this_run"]
        runs[name] = {"seconds": run["seconds"], "records_per_second": result["records"] / run["seconds"],
                      "kept": run["report"]["kept"].get("pairs", 0),
                      "requests": this_run["requests"].get("generator (asked)", 0),
                      "waiting_seconds": this_run["waiting_seconds"].get("generator", 0),
                      "checks_seconds": this_run["waiting_seconds"].get("checks", 0)}
    return {"records": result["records"], "peak_rss_mib": result["peak_rss_mib"], "cache_mib": result["cache_mib"],
            "runs": runs}


def table(results: list[dict]) -> list[str]:
    lines = ["| records | run | seconds | records/s | kept | requests sent | waiting for the endpoint (s, summed "
             "over records in flight) | checks (s) |", "|---|---|---|---|---|---|---|---|"]
    for result in results:
        for name, run in result["runs"].items():
            lines.append(f"| {result['records']} | {name} | {run['seconds']:.1f} | {run['records_per_second']:.0f} | "
                         f"{run['kept']} | {run['requests']} | {run['waiting_seconds']:.0f} | "
                         f"{run['checks_seconds']:.1f} |")
    return lines + memory_table(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--url", help="a real OpenAI-compatible server instead of the oracle")
    parser.add_argument("--model", default="oracle")
    parser.add_argument("--output-dir", type=Path, help="where to write build-pairs-cpu.md and .json (default: nowhere)")
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.latency, oracle_answer)
    if args.one:
        endpoint = EndpointSettings(args.url, args.model, concurrency=args.concurrency, max_tokens=256)
        print(json.dumps(measure(args.one, endpoint)))
        return

    server, url = start(__file__, args.latency) if args.url is None else (None, args.url)
    try:
        results = []
        for records in args.records:
            child = subprocess.run([sys.executable, __file__, "--one", str(records), "--url", url, "--model", args.model,
                                    "--concurrency", str(args.concurrency)], capture_output=True, text=True, check=True)
            results.append(summarized(json.loads(child.stdout.strip().splitlines()[-1])))
            print(f"{records} records done", file=sys.stderr)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    endpoint = (f"the demo oracle in its own process, {args.latency * 1000:.0f} ms per answer" if args.url is None
                else f"{args.url} ({args.model})")
    report = {"device": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores", "versions": versions(),
              "command": f"python {shlex.join(sys.argv)}", "endpoint": endpoint, "concurrency": args.concurrency,
              "results": results}
    lines = [
        "# build-pairs at scale: records per second, where the time goes, peak memory", "",
        f"- device: {report['device']}, nothing else running; the endpoint shares them",
        f"- versions: {report['versions']}",
        f"- command: `{report['command']}`",
        f"- endpoint: {endpoint}; concurrency {args.concurrency}; records: demo instructions without responses, each "
        f"made distinct, so each needs two generator requests (y1, y2) and no judge", "",
        *table(results),
    ]
    print("\n".join(lines))
    if args.output_dir is not None:
        write_results(args.output_dir, "build-pairs-cpu", lines, report)


if __name__ == "__main__":
    main()
