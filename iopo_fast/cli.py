"""`iopo-fast`: the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, load_config, options_markdown
from .data import DataError
from .evaluation.benchmarks import BenchmarkError
from .endpoint import EndpointError, EndpointSettings
from .evaluation.generation import BACKENDS, GenerationSettings, generator_class
from .evaluation.judge import Judge, JudgeError, load_judge_prompt
from .evaluation.offline_resources import MissingEvaluationPackage
from .evaluation.run import EvaluationError, evaluate_model
from .model import ModelError

EVALUATION_ERRORS = (BenchmarkError, EndpointError, EvaluationError, JudgeError, MissingEvaluationPackage)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iopo-fast", description="Fast IOPO and DPO preference training.")
    # The `deepspeed` launcher passes --local_rank before the command; the rank is read from
    # LOCAL_RANK, which it sets too.
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train from a YAML config, with --key=value overrides")
    train_parser.add_argument("config", help="YAML config file (see `iopo-fast options`)")
    eval_parser = commands.add_parser("eval", help="generate responses and check every constraint they should meet")
    eval_parser.add_argument("model", help="a model directory (a run's model/, full or LoRA), a hub id, or smollm2-135m-instruct")
    eval_parser.add_argument("--benchmarks", nargs="+", default=["demo"], metavar="NAME",
                             help="demo[:PATH] (in-domain), ifbench (out-of-domain), jsonl:PATH (your own prompts), "
                                  "judge:PATH (constraints in words, TRACE's evaluation file or yours, for --judge-url)")
    eval_parser.add_argument("--output", help="results folder (default: eval/<model folder name>)")
    eval_parser.add_argument("--max-new-tokens", type=int, default=GenerationSettings.max_new_tokens)
    eval_parser.add_argument("--temperature", type=float, default=GenerationSettings.temperature, help="0: greedy")
    eval_parser.add_argument("--top-p", type=float, default=GenerationSettings.top_p)
    eval_parser.add_argument("--seed", type=int, default=GenerationSettings.seed)
    eval_parser.add_argument("--batch-size", type=int, default=GenerationSettings.batch_size)
    eval_parser.add_argument("--limit", type=int, help="only the first N prompts of each benchmark")
    eval_parser.add_argument("--backend", choices=BACKENDS, default="auto",
                             help="auto: vLLM when it is installed and a GPU is present, else transformers")
    judge_options = eval_parser.add_argument_group("LLM judge (judge:PATH benchmarks), any OpenAI-compatible endpoint")
    judge_options.add_argument("--judge-url", help="e.g. http://localhost:8000/v1")
    judge_options.add_argument("--judge-model", help="the model name the endpoint serves")
    judge_options.add_argument("--judge-api-key-env", default=EndpointSettings.api_key_env,
                               help="environment variable that holds the API key")
    judge_options.add_argument("--judge-concurrency", type=int, default=EndpointSettings.concurrency,
                               help="requests in flight at most")
    judge_options.add_argument("--judge-timeout", type=float, default=EndpointSettings.timeout, help="seconds per request")
    judge_options.add_argument("--judge-retries", type=int, default=EndpointSettings.retries,
                               help="retries with backoff of a request that failed")
    judge_options.add_argument("--judge-max-tokens", type=int, default=EndpointSettings.max_tokens)
    judge_options.add_argument("--judge-prompt", help="a file with the judge prompt, holding {instruction}, "
                                                      "{constraint} and {response}")
    options_parser = commands.add_parser("options", help="list the config keys")
    options_parser.add_argument("--markdown", action="store_true", help="as the README's markdown table")
    args, overrides = parser.parse_known_args(argv)

    if args.command == "options":
        if overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        print(options_markdown() if args.markdown else "\n".join(_option_lines()))
        return 0
    if args.command == "eval":
        if overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        return _evaluate(args)
    from .checkpoint import CheckpointError
    from .trainer import NonFiniteLossError, train  # imported here: it pulls in torch and DeepSpeed

    try:
        train(load_config(args.config, overrides))
    except (CheckpointError, ConfigError, DataError, ModelError, NonFiniteLossError, *EVALUATION_ERRORS) as error:
        print(f"iopo-fast: error: {error}", file=sys.stderr)
        return 2
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    model = Path(args.model.rstrip("/"))
    # A run's exported model is output_dir/model: named after its run.
    output = args.output or str(Path("eval") / (model.parent.name if model.name == "model" else model.name))
    try:
        if args.limit is not None and args.limit <= 0:
            raise ValueError(f"--limit must be positive, got {args.limit}")
        settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.seed, args.batch_size)
        evaluate_model(args.model, args.benchmarks, output, settings, limit=args.limit,
                       make_generator=generator_class(args.backend), judge=_judge(args))
    except (*EVALUATION_ERRORS, ModelError, ValueError) as error:
        print(f"iopo-fast: error: {error}", file=sys.stderr)
        return 2
    print(f"results in {output}")
    return 0


def _judge(args: argparse.Namespace) -> Judge | None:
    if not args.judge_url and not args.judge_model:
        return None
    if not (args.judge_url and args.judge_model):
        raise ValueError("--judge-url and --judge-model go together")
    endpoint = EndpointSettings(args.judge_url, args.judge_model, args.judge_api_key_env, args.judge_concurrency,
                                args.judge_timeout, args.judge_retries, args.judge_max_tokens)
    return Judge(endpoint, load_judge_prompt(args.judge_prompt))


def _option_lines() -> list[str]:
    rows = options_markdown().splitlines()[2:]
    return [" ".join(cell.strip() for cell in row.strip("|").split("|", 2)) for row in rows]


if __name__ == "__main__":
    sys.exit(main())
