"""The ``productrec`` command: one entry point, one subcommand per step.

Command groups are found through the entry points ``productrec.commands``
(pyproject.toml): ``app`` never imports ``training``, and an installation
without ``training/`` (the serving image) simply has no training commands.
Option definitions are torch-free; each subcommand's implementation is imported
only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Sequence

log = logging.getLogger("productrec.cli")

COMMAND_GROUP = "productrec.commands"


MISSING_MODULE_EXTRAS = {
    **dict.fromkeys(("torch", "timm", "torchvision", "onnx", "onnxscript", "matplotlib"), "train"),
    **dict.fromkeys(("ray", "pyarrow"), "ray"),
    **dict.fromkeys(("fastapi", "uvicorn", "pydantic", "pydantic_settings", "multipart", "onnxruntime", "tqdm"), "serve-cpu"),
}


class CommandError(Exception):
    """A user error (bad argument, bad data): printed without a traceback, exit status 2."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    target: str  # "module:function", called with the parsed namespace
    description: str = ""


def discover_commands() -> list[Command]:
    """Every installed command group's commands; a group whose package is absent is left out.

    Groups are taken in reverse name order, so "training" (data to model) lists before "serving".
    """
    commands: list[Command] = []
    for group in sorted(entry_points(group=COMMAND_GROUP), key=lambda point: point.name, reverse=True):
        try:
            commands += group.load()
        except ImportError as exc:
            log.debug("command group %s not installed: %s", group.name, exc)
    return commands


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it is None (not given) or the help already explains it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="productrec",
        description="Product recognition: train BSCE classifiers on long-tailed, noisy data and serve them as an ensemble.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in discover_commands():
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            formatter_class=HelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(target=command.target)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, function_name = args.target.split(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        status = function(args)  # may import what one of its options needs (ray for score --engine ray)
    except ModuleNotFoundError as exc:
        extra = MISSING_MODULE_EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        parser.exit(2, f"productrec {args.command}: needs {exc.name}; install it with: pip install 'productrec[{extra}]'\n")
    except CommandError as exc:
        parser.exit(2, f"productrec {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
