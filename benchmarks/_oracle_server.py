"""The oracle endpoint of the data-building benchmarks, and their three runs.

The endpoint is an OpenAI-compatible chat server in its own process (`start` runs the benchmark's own
script with `--serve PORT --latency SECONDS`, which calls `serve`): it answers each request with a function
of its last message, after a fixed latency, so the figures measure the pipeline (the client, the cache, the
checks, the writes) and not a model.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from iopo_fast.distributed import free_port

RUNS = ("first run", "rerun of the finished folder", "outputs deleted, cache kept")


def serve(port: int, latency: float, answer: Callable[[str], str]) -> None:
    """POST /v1/chat/completions, answered with `answer(last message)`; GET /health."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def completions(request):
        body = await request.json()
        text = answer(body["messages"][-1]["content"])
        if latency:
            await asyncio.sleep(latency)
        return JSONResponse({"id": "0", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}]})

    async def health(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]),
                            Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start(script: str, latency: float) -> tuple[subprocess.Popen, str]:
    """The oracle of `script` in its own process, and its URL once it answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, script, "--serve", str(port), "--latency", str(latency)])
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the oracle endpoint did not start")


def three_runs(records: int, write_input: Callable[[Path, int], None], build: Callable[[Path, Path], dict],
               outputs: tuple[str, ...]) -> dict:
    """`build(input, output folder)` on `records` records, in this process: the first run, a rerun of the
    finished folder (every record skipped), and a run whose `outputs` were deleted but whose request cache was
    kept (every answer from the cache); with the cache's size and this process's peak resident memory."""
    with tempfile.TemporaryDirectory() as scratch:
        source, output = Path(scratch) / "input.jsonl", Path(scratch) / "out"
        write_input(source, records)
        runs = {}
        for name in RUNS:
            if name == "outputs deleted, cache kept":
                for file in (*outputs, "dropped.jsonl"):
                    (output / file).unlink(missing_ok=True)
            start_time = time.perf_counter()
            report = build(source, output)
            runs[name] = {"seconds": time.perf_counter() - start_time, "report": report}
        cache_bytes = (output / "cache.jsonl").stat().st_size
    return {"records": records, "runs": runs, "cache_mib": cache_bytes / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every oracle benchmark takes, and the hidden ones of its server and of its measured child."""
    parser.add_argument("--records", type=int, nargs="+", default=[12_000, 120_000])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="the oracle's seconds per answer")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)


def memory_table(results: list[dict]) -> list[str]:
    """Peak resident memory and the request cache's size, per size."""
    return ["", "| records | peak resident memory (MiB) | request cache on disk (MiB) |", "|---|---|---|",
            *(f"| {r['records']} | {r['peak_rss_mib']:.0f} | {r['cache_mib']:.0f} |" for r in results)]
