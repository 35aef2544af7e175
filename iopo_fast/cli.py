"""`iopo-fast`: the command line."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config, options_markdown
from .data import DataError
from .model import ModelError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iopo-fast", description="Fast IOPO and DPO preference training.")
    # The `deepspeed` launcher passes --local_rank before the command; the rank is read from
    # LOCAL_RANK, which it sets too.
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train from a YAML config, with --key=value overrides")
    train_parser.add_argument("config", help="YAML config file (see `iopo-fast options`)")
    options_parser = commands.add_parser("options", help="list the config keys")
    options_parser.add_argument("--markdown", action="store_true", help="as the README's markdown table")
    args, overrides = parser.parse_known_args(argv)

    if args.command == "options":
        if overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        print(options_markdown() if args.markdown else "\n".join(_option_lines()))
        return 0
    from .checkpoint import CheckpointError
    from .trainer import NonFiniteLossError, train  # imported here: it pulls in torch and DeepSpeed

    try:
        train(load_config(args.config, overrides))
    except (CheckpointError, ConfigError, DataError, ModelError, NonFiniteLossError) as error:
        print(f"iopo-fast: error: {error}", file=sys.stderr)
        return 2
    return 0


def _option_lines() -> list[str]:
    rows = options_markdown().splitlines()[2:]
    return [" ".join(cell.strip() for cell in row.strip("|").split("|", 2)) for row in rows]


if __name__ == "__main__":
    sys.exit(main())
