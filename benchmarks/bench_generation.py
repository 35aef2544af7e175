"""How fast `iopo-fast eval` answers on CPU: rows that take the next prompt against batched `generate`.

On the same prompts (IFEval's, from --first, in order), the same model, dtype and number of rows:

- `generate`: transformers' `generate`, greedy, on batches of --rows prompts sorted by length (left
  padding), each batch running until its longest response stops: how `iopo-fast eval` generated before;
- `rows`: `TransformersGenerator`, --rows rows decoding at once, a row that ends taking the next prompt
  (`iopo_fast.generation.row_decoding`).

For each: the wall time, prompts per second, new tokens per second (the responses' tokens, up to and
without the end token), the responses cut at --max-new-tokens, and the share of responses that are
identical between the two (in bf16, batch composition changes the last bits of the logits, so greedy
answers may part after a while). Run it alone: on a loaded machine the times mean nothing.

    python benchmarks/bench_generation.py [--prompts 64] [--max-new-tokens 512] [--rows 32] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from _results import RESULTS_DIR, cpu_name, versions

from iopo_fast.evaluation.benchmarks import load_benchmark
from iopo_fast.generation.generators import TransformersGenerator, _chat_text
from iopo_fast.generation.settings import DTYPES, GenerationSettings
from iopo_fast.model.loading import DEFAULT_MODEL


def with_generate(generator: TransformersGenerator, prompts: list[str], max_new_tokens: int, rows: int):
    """Responses (token ids, without the end token and padding) of batched `generate`, in prompt order."""
    tokenizer, model = generator.tokenizer, generator.model
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    end_ids = set(generator.decode.end_ids) | {tokenizer.pad_token_id}
    responses = {}
    for start in range(0, len(order), rows):
        batch = order[start:start + rows]
        encoded = tokenizer([_chat_text(tokenizer, prompts[index]) for index in batch], return_tensors="pt",
                            padding=True, add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                    top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        for index, new in zip(batch, output[:, encoded["input_ids"].shape[1]:].tolist()):
            ends = [position for position, token in enumerate(new) if token in end_ids]
            responses[index] = new[:ends[0]] if ends else new
    return [responses[index] for index in range(len(prompts))]


def with_rows(generator: TransformersGenerator, prompts: list[str], max_new_tokens: int):
    tokens = generator.tokenizer([_chat_text(generator.tokenizer, prompt) for prompt in prompts],
                                 add_special_tokens=False)["input_ids"]
    responses = {finished.index: finished.tokens for finished in generator.decode(tokens, max_new_tokens)}
    return [responses[index] for index in range(len(prompts))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--first", type=int, default=0, help="index of the first IFEval prompt")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    prompts = [item.prompt for item in load_benchmark("ifeval")[args.first:args.first + args.prompts]]
    generator = TransformersGenerator(args.model, GenerationSettings(batch_size=args.rows, dtype=args.dtype),
                                      device=torch.device("cpu"))
    runs = {"generate": lambda: with_generate(generator, prompts, args.max_new_tokens, args.rows),
            "rows": lambda: with_rows(generator, prompts, args.max_new_tokens)}
    results, responses = {}, {}
    for name, run in runs.items():
        start = time.perf_counter()
        responses[name] = run()
        seconds = time.perf_counter() - start
        tokens = sum(map(len, responses[name]))
        results[name] = {"seconds": seconds, "prompts_per_second": len(prompts) / seconds,
                         "tokens_per_second": tokens / seconds, "new_tokens": tokens,
                         "cut": sum(len(response) == args.max_new_tokens for response in responses[name])}
    identical = sum(a == b for a, b in zip(responses["generate"], responses["rows"])) / len(prompts)
    baseline = results["generate"]["seconds"]
    lines = [f"# Generation on CPU: {args.prompts} IFEval prompts, up to {args.max_new_tokens} new tokens, "
             f"{args.rows} rows, {args.dtype}",
             "", f"Device: {cpu_name()}, {torch.get_num_threads()} threads. Versions: {versions()}.",
             f"Command: `{shlex.join([sys.executable, *sys.argv])}`", "",
             "| method | seconds | prompts/s | new tokens/s | new tokens | cut at limit | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        lines.append(f"| {name} | {result['seconds']:.1f} | {result['prompts_per_second']:.3f} | "
                     f"{result['tokens_per_second']:.1f} | {result['new_tokens']} | {result['cut']} | "
                     f"{baseline / result['seconds']:.2f}x |")
    lines += ["", f"Identical responses: {100 * identical:.0f}% of {len(prompts)}."]
    report = "\n".join(lines) + "\n"
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "generation-cpu.md").write_text(report)
    (args.output_dir / "generation-cpu.json").write_text(json.dumps(
        {"settings": {key: str(value) for key, value in vars(args).items()}, "results": results,
         "identical": identical, "versions": versions(), "device": cpu_name()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
