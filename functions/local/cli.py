"""`imagepipe`: process files locally, run the emulated pipeline, upload, ask for status.

Each subcommand lives in its own module with `add_arguments(parser)` and
`run(args) -> int`; this file only wires them together. Exit codes: see
`functions.local.exits`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from functions.core.settings import SettingsError
from functions.local.exits import EXIT_USAGE

SUBCOMMANDS = {
    "process": ("functions.local.process", "run the core on local files and write renditions"),
    "dev": (
        "functions.local.dev",
        "run the whole pipeline on an emulated AWS or GCP on 127.0.0.1",
    ),
    "upload": ("functions.local.upload", "upload images and wait for their records"),
    "status": (
        "functions.local.status",
        "print the record of one uploaded object, or the records with one status",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagepipe", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, summary) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=summary, description=summary)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SettingsError as error:
        print(f"imagepipe {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
