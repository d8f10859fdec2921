"""Option definitions of the training subcommands (torch-free; implementations load lazily)."""

from __future__ import annotations

from app.cli import Command

TRAINING_COMMANDS: list[Command] = []
