"""The CLI's one error wrapper: each error class it names exists where it looks, and becomes one line."""

from __future__ import annotations

import importlib

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli.common import _USER_ERRORS, friendly_errors, user_error_message


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
