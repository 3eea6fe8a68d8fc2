"""An option declared in `orchestrator.cli.common` means one thing in every `trilevel` command that takes it."""

from __future__ import annotations

import click

from orchestrator.cli import _register_commands, cli, common


def _commands() -> dict[str, click.Command]:
    _register_commands()
    context = click.Context(cli, info_name="trilevel")
    found: dict[str, click.Command] = {}
    for name in cli.list_commands(context):
        command = cli.get_command(context, name)
        if isinstance(command, click.Group):
            inner = click.Context(command, parent=context)
            found |= {f"{name} {sub}": command.get_command(inner, sub) for sub in command.list_commands(inner)}
        else:
            found[name] = command
    return found


def test_a_shared_flag_has_its_parameter_name_in_every_command():
    shared = {
        flag: click.Option(option.param_decls).name
        for option in vars(common).values()
        if isinstance(option, common.SharedOption)
        for flag in option.param_decls
        if flag.startswith("-")
    }
    taken: dict[str, set[str]] = {}
    for path, command in _commands().items():
        for param in command.params:
            for flag in param.opts:
                if flag in shared:
                    assert param.name == shared[flag], f"trilevel {path} {flag}: {param.name} != {shared[flag]}"
                    taken.setdefault(flag, set()).add(path)
    # the options `reproduce` shares with `run`, `sweep` and `submit` (which submits `reproduce` too)
    for flag in ("--seeds", "--random", "--scale", "--set", "--storage", "--tracking-uri", "--dry-run", "--no-reuse"):
        assert {"run", "sweep", "reproduce", "submit"} <= taken[flag], (flag, taken[flag])
    assert {"reproduce", "submit"} <= taken["--tables"]


def test_every_table_is_the_default_of_reproduce_local_python_and_submitted():
    """`--tables` left out means every table of `orchestrator.reproduce.TABLES`, wherever reproduce is started."""
    import inspect

    from orchestrator.reproduce import ALL_TABLES, TABLES
    from orchestrator.submit import submit_reproduce

    assert tuple(TABLES) == ALL_TABLES
    commands = _commands()
    (local,) = [p for p in commands["reproduce"].params if p.name == "tables"]
    assert local.default.split(",") == list(ALL_TABLES)
    assert inspect.signature(submit_reproduce).parameters["tables"].default == ALL_TABLES
    (submitted,) = [p for p in commands["submit"].params if p.name == "tables"]
    assert submitted.default is None and ", ".join(ALL_TABLES) in submitted.help  # None: all, and only for reproduce
