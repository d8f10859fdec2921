"""The training subcommands: --help without torch, and exit status 2 with a message for bad arguments and bad data."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser
from app.cli import main as cli_main

TRAINING_SUBCOMMANDS = ("data", "train", "evaluate", "export")
HEAVY_MODULES = ("torch", "timm", "onnx", "onnxruntime", "matplotlib", "tqdm")


def test_help_never_imports_torch() -> None:
    script = (
        "import contextlib, io, sys\n"
        "from app.cli import main\n"
        f"for argv in ([], *[[name] for name in {TRAINING_SUBCOMMANDS!r}]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        main([*argv, '--help'])\n"
        "    assert 'usage: productrec' in out.getvalue(), argv\n"
        f"loaded = sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", TRAINING_SUBCOMMANDS)
def test_every_option_is_explained(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    subcommands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    for action in subcommands.choices[command]._actions:
        assert action.help and len(action.help) > 10, action.dest
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text  # a default that means something else is spelt out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``productrec argv``, expecting exit status 2; returns what it printed to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "resnet10x"], "unknown timm model 'resnet10x'; did you mean"),
        (["train", "--model", "test_resnet", "--pretrained", "/nonexistent/weights.pt"], "--pretrained /nonexistent/weights.pt: file not found"),
        (["train", "--lr", "-0.1"], "--lr must be > 0"),
        (["train", "--tta-sizes", "24", "32"], "must be >= --input-size"),
        (["train", "--mean", "0.5"], "--mean and --std go together"),
        (["train", "--epochs", "two"], "invalid int value"),
        (["train", "--noise-type", "sideways"], "invalid choice"),
        (["train", "--model", "test_resnet", "--dataset", "/nonexistent/images"], "/nonexistent/images not found"),
        (["data", "--dataset", "/nonexistent/images"], "/nonexistent/images not found"),
        (["evaluate"], "give one or more run directories or --repository"),
        (["evaluate", "/nonexistent/run"], "run directory /nonexistent/run not found"),
        (["evaluate", "--repository", "/nonexistent/models"], "ensemble.json: file not found"),
        (["export", "/nonexistent/run"], "run directory /nonexistent/run not found"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_cli(argv, capsys)
    assert message in err
    assert "Traceback" not in err


def test_bad_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    assert "no best.pt" in run_cli(["evaluate", str(empty_run)], capsys)
    assert "no best.pt" in run_cli(["export", str(empty_run)], capsys)
    no_classes = tmp_path / "flat"
    no_classes.mkdir()
    (no_classes / "a.png").write_bytes(b"not an image")
    assert "no class folders" in run_cli(["train", "--model", "test_resnet", "--dataset", str(no_classes), "--output", str(tmp_path / "out")], capsys)
    csv = tmp_path / "data.csv"
    csv.write_text("file,class\na.png,x\n")
    assert "path,label" in run_cli(["data", "--dataset", str(csv)], capsys)
    missing = tmp_path / "fmnist"
    missing.mkdir()
    assert "dataset-fashion-mnist" in run_cli(["train", "--model", "test_resnet", "--fmnist-dir", str(missing), "--output", str(tmp_path / "out")], capsys)


def test_a_finished_run_is_not_overwritten(trained_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = trained_runs["resnet10t"]
    err = run_cli(["train", "--model", "resnet10t", "--output", str(run_dir)], capsys)
    assert "already holds a run; pass --resume" in err
