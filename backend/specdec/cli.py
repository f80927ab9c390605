"""`specdec` command line. Each command lives in specdec/commands/<name>.py and provides
``add_parser(subparsers)`` (which sets ``func``) so commands stay independent of each other."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("generate", "serve", "bench", "distill", "acceptance")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specdec", description="Speculative decoding engine and Triton server")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"specdec.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"specdec.commands.{name}":
                continue          # command not shipped in this build
            raise
        mod.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
