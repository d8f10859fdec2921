"""Option definitions of the serving subcommands (serve, score)."""

from __future__ import annotations

from app.cli import Command

SERVING_COMMANDS: list[Command] = []
