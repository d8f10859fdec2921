"""Option definitions of the serving subcommands (serve, score).

Their options are the service's settings (``app.core.config.Settings``): each
option overrides the environment variable ``PRODUCTREC_<NAME>``, and unset
options leave the environment (or the default) in charge.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal, Sequence, get_args, get_origin

from app.cli import Command

# Settings exposed as options of `productrec score` (serve exposes them all but the API key).
SCORE_SETTINGS = (
    "repository",
    "provider",
    "intra_op_threads",
    "intra_op_spinning",
    "strategy",
    "decode_workers",
    "decode_timeout_s",
    "max_image_pixels",
)
SECRET_SETTINGS = ("api_key",)


def _setting_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_setting_options(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One option per setting (all but secrets when ``names`` is None), in their own group."""
    try:
        from app.core.config import Settings
    except ImportError:  # a training-only install: `productrec --help` must still work
        parser.add_argument_group(
            "service settings", "install the serving extra (productrec[serve-cpu]) to use this command"
        )
        return
    group = parser.add_argument_group(
        "service settings",
        "each overrides the environment variable PRODUCTREC_<NAME>; unset, the environment or the default applies",
    )
    fields = Settings.model_fields
    for name in names or [name for name in fields if name not in SECRET_SETTINGS]:
        field = fields[name]
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} [PRODUCTREC_{name.upper()}; default {default}]"
        if field.annotation is bool:
            group.add_argument(
                _setting_flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            choices = _literal_choices(field.annotation)
            group.add_argument(
                _setting_flag(name),
                dest=name,
                default=argparse.SUPPRESS,
                choices=choices,
                metavar=None if choices else name.upper(),
                help=help_text,
            )


def _literal_choices(annotation: object) -> list[str] | None:
    """The values of a ``Literal[...]`` (possibly ``| None``) annotation, else None."""
    if get_origin(annotation) is Literal:
        return [str(value) for value in get_args(annotation)]
    for member in get_args(annotation):
        if get_origin(member) is Literal:
            return [str(value) for value in get_args(member)]
    return None


def given_settings(args: argparse.Namespace) -> list[str]:
    """Names of the settings given as options (the others are left to the environment)."""
    from app.core.config import Settings

    return [name for name in Settings.model_fields if getattr(args, name, None) is not None]


def settings_from_args(args: argparse.Namespace, **fixed: object):
    """``Settings`` from the environment, overridden by the options given and ``fixed``; CommandError if invalid."""
    from pydantic import ValidationError

    from app.cli import CommandError
    from app.core.config import Settings

    overrides = {**{name: getattr(args, name) for name in given_settings(args)}, **fixed}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CommandError(f"invalid settings: {problems}") from exc


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_setting_options(parser)


def _add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        type=Path,
        metavar="DIR|MANIFEST.csv",
        help="a folder of images (recursive) or a CSV with a 'path' column (and optionally 'label')",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="results, .csv, .jsonl or .parquet (a folder of parts; needs pyarrow); an existing one is resumed",
    )
    parser.add_argument("--top-k", type=int, default=5, help="labels per image")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True, help="multi-crop TTA")
    parser.add_argument("--batch-size", type=int, default=32, help="images per ensemble run (the max_batch_size setting)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_setting_options(parser, SCORE_SETTINGS)
    ray = parser.add_argument_group("engine", "where the pipeline runs (ray needs productrec[ray])")
    ray.add_argument("--engine", choices=["local", "ray"], default="local", help="this process, or a Ray Data job")
    ray.add_argument("--ray-address", help="join this Ray cluster (auto, ray://HOST:PORT); unset: start Ray locally")
    ray.add_argument("--ray-actors", type=int, default=1, help="inference actors, each loading the ensemble")
    ray.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="GPUs per inference actor (runs on CUDA)")
    ray.add_argument(
        "--ray-cpus", type=int, help="logical CPUs of a local Ray (default: one per decode worker and inference actor)"
    )


SERVING_COMMANDS: list[Command] = [
    Command(
        name="serve",
        help="run the HTTP service on a model repository",
        description="Start the ensemble service (FastAPI on uvicorn). Every setting can also be given as a "
        "PRODUCTREC_* environment variable; readiness is at /readyz, the API at /docs.",
        add_arguments=_add_serve_arguments,
        target="app.main:serve_command",
    ),
    Command(
        name="score",
        help="score a folder or manifest of images offline into CSV/JSONL/Parquet, here or on Ray",
        description="The service's engine without HTTP: streams the images in chunks, records per-file errors, "
        "and resumes an existing output by skipping the files already in it.",
        add_arguments=_add_score_arguments,
        target="app.score:score_command",
    ),
]
