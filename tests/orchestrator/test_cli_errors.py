"""The CLI's one error wrapper: each error class it names exists where it looks, and becomes one line."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli.common import _USER_ERRORS, friendly_errors, user_error_message

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("module", "name"), _USER_ERRORS)
def test_every_named_error_class_lives_where_the_wrapper_looks(module, name):
    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, BaseException)
    message = user_error_message(error("the problem"))
    assert message is not None and message.endswith("the problem"), message  # the user reads what went wrong


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback():
    from orchestrator.jobs import SubmitError

    @click.command()
    @click.argument("what")
    @friendly_errors
    def command(what: str) -> None:
        raise SubmitError("no job server at 127.0.0.1:1") if what == "user" else KeyError("bug")

    user = CliRunner().invoke(command, ["user"])
    assert user.exit_code == 1 and user.output == "Error: no job server at 127.0.0.1:1\n"
    bug = CliRunner().invoke(command, ["bug"])
    assert isinstance(bug.exception, KeyError)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_no_ray_answers_fails_at_once_naming_it(tmp_path):
    """`ray.init` retries a dead GCS address for ~20 minutes; the CLI must say so in seconds, before any run.

    A real `python -m orchestrator sweep` process, as a user runs it (in this process a session's Ray may
    already be connected, and a connected process is not asked to connect again).
    """
    address = f"127.0.0.1:{_free_port()}"
    where = ["--storage", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    command = [sys.executable, "-m", "orchestrator", "sweep", "table8", "--scale", "tiny", *where, "--address", address]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert f"no Ray cluster answers at --address {address}" in said and "Connection refused" in said, said
    assert "Traceback" not in said


def test_ctrl_c_anywhere_in_a_command_exits_130_not_click_s_aborted():
    """A real SIGINT outside Tune's loop (planning, a lease, Ray's start): status 130, as a shell reports it."""
    from orchestrator.cli import INTERRUPTED_EXIT, InterruptibleGroup

    group = InterruptibleGroup()

    @group.command()
    def plan() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C delivers it; Python raises KeyboardInterrupt
        time.sleep(10)
        raise AssertionError("the interrupt did not reach the command")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's; xdist workers ignore SIGINT
    try:
        result = CliRunner().invoke(group, ["plan"])
        plain = CliRunner().invoke(click.Group(commands=[plan]), ["plan"])  # click's own handling, replaced here
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.exit_code == INTERRUPTED_EXIT == 130, result.output
    assert "Interrupted." in result.output and "Aborted!" not in result.output
    assert plain.exit_code == 1 and "Aborted!" in plain.output
