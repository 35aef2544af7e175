"""`iopo-fast`: the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, load_config, options_markdown
from .data.records import DataError
from .endpoints.client import EndpointError, EndpointSettings
from .evaluation.benchmarks import BenchmarkError
from .evaluation.judge import ConstraintJudge, Judge, JudgeError
from .evaluation.taxonomy import TaxonomyError, load_taxonomy
from .evaluation.trace_judge import TraceJudge
from .evaluation.offline_resources import MissingEvaluationPackage
from .evaluation.run import EvaluationError, evaluate_model
from .generation.generators import BACKENDS, generator_class
from .generation.settings import DTYPES, GenerationSettings
from .generation.local_chat import LocalModel
from .model.loading import ModelError

EVALUATION_ERRORS = (BenchmarkError, EndpointError, EvaluationError, JudgeError, MissingEvaluationPackage,
                     TaxonomyError)
JUDGE_PROTOCOLS = {judge.protocol: judge for judge in (TraceJudge, ConstraintJudge)}
# build-instructions' answers: a structure of up to 15 constraints as JSON, TRACE's judge explaining each.
INSTRUCTION_MAX_TOKENS = 2048


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
                             help="demo[:PATH] (in-domain), ifbench and ifeval (out-of-domain), jsonl:PATH (your own prompts), "
                                  "judge:PATH (constraints in words, TRACE's evaluation file or yours, for --judge-url)")
    eval_parser.add_argument("--output", help="results folder (default: eval/<model folder name>)")
    eval_parser.add_argument("--max-new-tokens", type=int, default=GenerationSettings.max_new_tokens,
                             help="default: per benchmark (demo 256, ifbench and ifeval 1280, jsonl and judge 1280)")
    eval_parser.add_argument("--temperature", type=float, default=GenerationSettings.temperature, help="0: greedy")
    eval_parser.add_argument("--top-p", type=float, default=GenerationSettings.top_p)
    eval_parser.add_argument("--seed", type=int, default=GenerationSettings.seed)
    eval_parser.add_argument("--batch-size", type=int, default=GenerationSettings.batch_size,
                             help="transformers: sequences decoded at once (a row that ends takes the next prompt)")
    eval_parser.add_argument("--dtype", choices=DTYPES, default=GenerationSettings.dtype,
                             help="float32: responses measured not to depend on --batch-size (on CPU); "
                                  "bfloat16: half the memory")
    eval_parser.add_argument("--limit", type=int, help="only the first N prompts of each benchmark")
    eval_parser.add_argument("--backend", choices=BACKENDS, default="auto",
                             help="auto: vLLM when it is installed and a GPU is present, else transformers")
    judge_options = eval_parser.add_argument_group("LLM judge (judge:PATH benchmarks), any OpenAI-compatible endpoint")
    _endpoint_options(judge_options, "judge", max_tokens=None)
    judge_options.add_argument("--judge-protocol", choices=JUDGE_PROTOCOLS, default=TraceJudge.protocol,
                               help="trace: the IOPO paper's, one request per response scoring every constraint "
                                    "0-10 (met only at 10); per-constraint: one YES/NO request per constraint")
    judge_options.add_argument("--judge-prompt", help="a file with the judge prompt, holding {instruction}, "
                                                      "{constraints} (trace) or {constraint} (per-constraint), "
                                                      "and {response}")
    eval_parser.add_argument("--taxonomy", help="a JSON file of constraint types and dimensions, for the accuracies "
                                                "by type and dimension (default: TRACE's 5 types and 26 dimensions)")
    pairs_parser = commands.add_parser("build-pairs", help="build IOPO records (x1, x2, y1, y2) from instructions "
                                                           "with constraints, and their responses if any")
    pairs_parser.add_argument("input", help="records with an instruction, its constraints and optionally a response, "
                                            "in any format the trainer reads (see `iopo_fast.pairs.records`)")
    pairs_parser.add_argument("output", help="folder for pairs.jsonl, dropped.jsonl, report.json and the request cache; "
                                             "a rerun resumes")
    pairs_parser.add_argument("--prompts", help="a JSON or YAML file replacing the prompts of some steps "
                                                "(answer, modify, restate, judge)")
    pairs_parser.add_argument("--limit", type=int, help="only the first N records")
    pairs_parser.add_argument("--seed", type=int, default=0, help="seeds the choice among the changes a rule allows")
    generator_options = pairs_parser.add_argument_group(
        "generator (y1 when a record has none, y2, x2 for constraints in words): an endpoint, or with --generator-model "
        "alone a local Hugging Face model; without one, only changes whose x2 and y2 a rule writes are built")
    _endpoint_options(generator_options, "generator", local=True)
    judge_pairs_options = pairs_parser.add_argument_group("judge of constraints in words (default: the generator)")
    _endpoint_options(judge_pairs_options, "judge", local=True)
    instructions_parser = commands.add_parser(
        "build-instructions", help="TRACE's construction: simple instructions expanded with constraints, checked, "
                                   "answered and judged; a training split (SFT, and build-pairs' input) and an "
                                   "evaluation split")
    instructions_parser.add_argument("input", help="simple instructions, in any format the trainer reads "
                                                   "(a prompt or instruction field, or a chat's user turn)")
    instructions_parser.add_argument("output", help="folder for instructions.jsonl, eval.jsonl, eval-checks.jsonl, "
                                                    "dropped.jsonl, report.json and the request cache; a rerun resumes")
    instructions_parser.add_argument("--prompts", help="a JSON or YAML file replacing the prompts of some steps "
                                                       "(expand, structure, review, answer, revise, judge)")
    instructions_parser.add_argument("--taxonomy", help="a JSON file of constraint types and dimensions "
                                                        "(default: TRACE's 5 types and 26 dimensions)")
    instructions_parser.add_argument("--plan", help="a JSON file of the distributions of constraints per instruction "
                                                    "and of dimensions (default: TRACE's evaluation set's)")
    instructions_parser.add_argument("--eval-fraction", type=float, default=0.01,
                                     help="share of the instructions set apart for evaluation, never trained on")
    instructions_parser.add_argument("--max-tries", type=int, default=3, help="responses tried per instruction")
    instructions_parser.add_argument("--max-constraints", type=int, default=15,
                                     help="an instruction structured with more is dropped")
    instructions_parser.add_argument("--limit", type=int, help="only the first N records")
    instructions_parser.add_argument("--seed", type=int, default=0,
                                     help="seeds the plan of each instruction and the evaluation split")
    _endpoint_options(instructions_parser.add_argument_group(
        "generator (expansion, structuring, review, responses): an endpoint, or with --generator-model alone a "
        "local Hugging Face model"), "generator", local=True, max_tokens=INSTRUCTION_MAX_TOKENS)
    _endpoint_options(instructions_parser.add_argument_group("judge of constraints in words, by TRACE's protocol "
                                                             "(default: the generator)"), "judge", local=True,
                      max_tokens=INSTRUCTION_MAX_TOKENS)
    options_parser = commands.add_parser("options", help="list the config keys")
    options_parser.add_argument("--markdown", action="store_true", help="as the markdown table of docs/configuration.md")
    args, overrides = parser.parse_known_args(argv)

    if args.command == "options":
        if overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        print(options_markdown() if args.markdown else "\n".join(_option_lines()))
        return 0
    if args.command in ("eval", "build-pairs", "build-instructions"):
        if overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        return {"eval": _evaluate, "build-pairs": _build_pairs, "build-instructions": _build_instructions}[
            args.command](args)
    from .training.checkpoint import CheckpointError
    from .training.engine import NonFiniteLossError
    from .training.loop import train  # imported here: it pulls in torch and DeepSpeed
    from .training.optimizers import NonFiniteGradientError

    try:
        train(load_config(args.config, overrides))
    except (CheckpointError, ConfigError, DataError, ModelError, NonFiniteGradientError, NonFiniteLossError,
            *EVALUATION_ERRORS) as error:
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
        settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.seed, args.batch_size,
                                      args.dtype)
        evaluate_model(args.model, args.benchmarks, output, settings, limit=args.limit,
                       make_generator=generator_class(args.backend), judge=_judge(args),
                       taxonomy=load_taxonomy(args.taxonomy))
    except (*EVALUATION_ERRORS, ModelError, ValueError) as error:
        print(f"iopo-fast: error: {error}", file=sys.stderr)
        return 2
    print(f"results in {output}")
    return 0


def _judge(args: argparse.Namespace) -> Judge | None:
    protocol = JUDGE_PROTOCOLS[args.judge_protocol]
    if args.judge_max_tokens is None:
        args.judge_max_tokens = protocol.MAX_TOKENS
    endpoint = _endpoint_settings(args, "judge")
    return protocol.with_prompt_file(endpoint, args.judge_prompt) if endpoint is not None else None


def _build_pairs(args: argparse.Namespace) -> int:
    from .pairs.pipeline import build_pairs
    from .pairs.prompts import PromptError, load_prompts

    try:
        if args.limit is not None and args.limit <= 0:
            raise ValueError(f"--limit must be positive, got {args.limit}")
        models = _model_settings(args, "generator"), _model_settings(args, "judge")  # ValueError: out of range
        prompts = load_prompts(args.prompts)
    except (PromptError, ValueError) as error:
        print(f"iopo-fast: error: {error}", file=sys.stderr)
        return 2
    try:
        build_pairs(args.input, args.output, *models, prompts, seed=args.seed, limit=args.limit)
    except (DataError, EndpointError, ModelError) as error:
        print(f"iopo-fast: error: {error}", file=sys.stderr)
        return 2
    print(f"pairs in {Path(args.output) / 'pairs.jsonl'}, report in {Path(args.output) / 'report.json'}")
    return 0


def _build_instructions(args: argparse.Namespace) -> int:
    from .instructions.build import build_instructions
    from .instructions.plan import PlanError, load_plan
    from .instructions.prompts import load_instruction_prompts
    from .pairs.prompts import PromptError

    try:
        if args.limit is not None and args.limit <= 0:
            raise ValueError(f"--limit must be positive, got {args.limit}")
        if not 0 <= args.eval_fraction < 1 or args.max_tries < 1 or args.max_constraints < 1:
            raise ValueError("--eval-fraction must be in [0, 1), --max-tries and --max-constraints at least 1")
        generator, judge = _model_settings(args, "generator"), _model_settings(args, "judge")
        if generator is None:
            raise ValueError("every stage asks a model: give --generator-url and --generator-model, or "
                             "--generator-model alone for a local one")
        taxonomy = load_taxonomy(args.taxonomy)
        plan, prompts = load_plan(args.plan, taxonomy), load_instruction_prompts(args.prompts)
    except (PlanError, PromptError, TaxonomyError, ValueError) as error:
        print(f"iopo-fast: error: {error}", file=sys.stderr)
        return 2
    try:
        build_instructions(args.input, args.output, generator, judge, prompts, taxonomy, plan, seed=args.seed,
                           eval_fraction=args.eval_fraction, max_tries=args.max_tries,
                           max_constraints=args.max_constraints, limit=args.limit)
    except (DataError, EndpointError, ModelError) as error:
        print(f"iopo-fast: error: {error}", file=sys.stderr)
        return 2
    output = Path(args.output)
    print(f"training split in {output / 'instructions.jsonl'}, evaluation split in {output / 'eval.jsonl'} and "
          f"{output / 'eval-checks.jsonl'}, report in {output / 'report.json'}")
    return 0


def _endpoint_options(group, name: str, local: bool = False, max_tokens: int | None = EndpointSettings.max_tokens) -> None:
    """--NAME-url, --NAME-model and the request settings of one OpenAI-compatible endpoint; with `local`, also
    those of a local model (--NAME-model without --NAME-url). `max_tokens` None: the caller's default."""
    group.add_argument(f"--{name}-url", help="e.g. http://localhost:8000/v1")
    group.add_argument(f"--{name}-model", help="the model name the endpoint serves" + (
        "; alone, a local model directory, hub id or smollm2-135m-instruct" if local else ""))
    if local:
        group.add_argument(f"--{name}-batch-size", type=int, default=8, help="a local model's batch size")
        group.add_argument(f"--{name}-backend", choices=BACKENDS, default="auto",
                           help="a local model's backend: auto is vLLM when it is installed and a GPU is present")
    group.add_argument(f"--{name}-api-key-env", default=EndpointSettings.api_key_env,
                       help="environment variable that holds the API key")
    group.add_argument(f"--{name}-concurrency", type=int, default=EndpointSettings.concurrency,
                       help="requests in flight at most")
    group.add_argument(f"--{name}-timeout", type=float, default=EndpointSettings.timeout, help="seconds per request")
    group.add_argument(f"--{name}-retries", type=int, default=EndpointSettings.retries,
                       help="retries with backoff of a request that failed")
    group.add_argument(f"--{name}-max-tokens", type=int, default=max_tokens,
                       help=None if max_tokens else "default: the protocol's (trace 2048, per-constraint 512)")
    group.add_argument(f"--{name}-temperature", type=float, default=EndpointSettings.temperature)


def _model_settings(args: argparse.Namespace, name: str) -> EndpointSettings | LocalModel | None:
    """The endpoint of `_endpoint_options`, or a local model when only its model is given, or None."""
    model = getattr(args, f"{name}_model")
    if model and not getattr(args, f"{name}_url"):
        return LocalModel(model, *(getattr(args, f"{name}_{key}") for key in
                                   ("max_tokens", "temperature", "batch_size", "backend")))
    return _endpoint_settings(args, name)


def _endpoint_settings(args: argparse.Namespace, name: str) -> EndpointSettings | None:
    """The endpoint `_endpoint_options` describes, or None when neither its URL nor its model is given."""
    url, model = getattr(args, f"{name}_url"), getattr(args, f"{name}_model")
    if not url and not model:
        return None
    if not (url and model):
        raise ValueError(f"--{name}-url and --{name}-model go together")
    return EndpointSettings(url, model, *(getattr(args, f"{name}_{key}") for key in
                                          ("api_key_env", "concurrency", "timeout", "retries", "max_tokens",
                                           "temperature")))


def _option_lines() -> list[str]:
    rows = options_markdown().splitlines()[2:]
    return [" ".join(cell.strip() for cell in row.strip("|").split("|", 2)) for row in rows]


if __name__ == "__main__":
    sys.exit(main())
