"""The `trilevel` commands of README.md and deployment/README.md, parsed out of their shell code blocks.

Docs drift silently: a renamed option or command, a `--set` key the schema no longer has, a submit line
the CLI refuses. Every documented invocation is parsed by the CLI's own click commands (options,
choices, arguments: everything but running it), its `--help` is shown in-process, and a sweep's
experiment (`run`, `sweep`, `submit`) is resolved with its `--scale`/`--set`/`--storage`. A submit line
also goes through `submit_sweep` up to the cluster: the address is swapped for a closed port, so it must
fail *only* because no job server answers there (its paths are as a cluster needs them). The MLflow
server's reachability check is skipped there: the docs name servers that exist only in a cluster.

Placeholders are allowed in angle brackets (`<head>`, `<submission-id>`) and must be explained in the
prose of their document; an optional argument in square brackets (`[SWEEP]`) is tried with and without.
Runs without Ray or MLflow: about a second.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli import _register_commands, cli
from orchestrator.experiment import load_experiment
from orchestrator.jobs import SubmitError
from orchestrator.submit import REPRODUCE, submit_reproduce, submit_sweep
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCS = {"README.md": ROOT / "README.md", "deployment/README.md": ROOT / "deployment" / "README.md"}
SHELLS = {"", "bash", "sh", "shell", "console", "zsh"}
OPERATORS = {"&&", "||", ";", "|", "&"}
COMMAND_POSITION = {None, "--", *OPERATORS, "exec", "env", "time", "nohup", "then", "do"}
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9-]*>")
OPTIONAL = re.compile(r"\[[A-Z_]+\]")
EXPERIMENT_COMMANDS = {"run", "sweep", "submit"}

_register_commands()


def _shell_lines(markdown: str) -> Iterator[str]:
    """The logical lines of the shell code blocks of a Markdown text (continuations joined)."""
    for block in re.finditer(r"^ *```([\w-]*)[^\n]*\n(.*?)^ *```", markdown, flags=re.MULTILINE | re.DOTALL):
        if block.group(1).lower() not in SHELLS:
            continue
        buffer = ""
        for raw in block.group(2).splitlines():
            line = raw.rstrip()
            if line.endswith("\\"):
                buffer += line[:-1] + " "
                continue
            yield (buffer + line).strip().removeprefix("$ ")
            buffer = ""


def _invocations(line: str) -> list[list[str]]:
    """The arguments of every `trilevel` at a command position of a shell line, up to the next operator."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    tokens = list(lexer)
    found = []
    for i, token in enumerate(tokens):
        if token == "trilevel" and (tokens[i - 1] if i else None) in COMMAND_POSITION:
            args = []
            for word in tokens[i + 1 :]:
                if word in OPERATORS:
                    break
                args.append(word)
            found.append(args)
    return found


def _documented() -> list[tuple[str, list[str]]]:
    return [
        (doc, args)
        for doc, path in DOCS.items()
        for line in _shell_lines(path.read_text())
        for args in _invocations(line)
    ]


def _variants(args: list[str]) -> list[list[str]]:
    """`args` with placeholders filled in (an address for `<head>`); an optional `[X]` dropped and given."""
    filled = [PLACEHOLDER.sub(lambda m: "127.0.0.1" if m.group(0) == "<head>" else m.group(0)[1:-1], a) for a in args]
    if not any(OPTIONAL.fullmatch(a) for a in filled):
        return [filled]
    return [
        [a for a in filled if not OPTIONAL.fullmatch(a)],
        [a.strip("[]") if OPTIONAL.fullmatch(a) else a for a in filled],
    ]


def _parse(args: list[str]) -> tuple[list[str], click.Context]:
    """(command path, context) of `trilevel ARGS` parsed by the CLI's own commands: nothing is run."""
    context = click.Context(cli, info_name="trilevel")
    command: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"`trilevel {shlex.join(args)}` names no command of `{' '.join(['trilevel', *path])}`"
        name = rest.pop(0)
        sub = command.get_command(context, name)
        assert sub is not None, f"`trilevel {shlex.join(args)}`: no command {name!r} (trilevel {' '.join(path)})"
        path.append(name)
        command = sub
        if isinstance(command, click.Group):
            context = click.Context(command, info_name=name, parent=context)
    try:
        return path, command.make_context(name, rest, parent=context)
    except click.BadParameter as err:
        # an example of the user's own files (`photos/`): an existing path is all the command asks
        if isinstance(err.param.type, click.Path) and err.param.type.exists and "does not exist" in err.message:
            return path, command.make_context(name, rest, parent=context, resilient_parsing=True)
        raise


def test_the_docs_show_trilevel_commands():
    documented = _documented()
    assert {doc for doc, _ in documented} == set(DOCS)
    assert sum(args[:1] == ["submit"] for _, args in documented) >= 3


@pytest.mark.parametrize(
    ("doc", "args"), _documented(), ids=lambda v: v if isinstance(v, str) else "trilevel " + " ".join(v)[:60]
)
def test_a_documented_command_parses_and_has_help(doc, args, tmp_path):
    text = DOCS[doc].read_text()
    prose = re.sub(r"^ *```.*?^ *```", "", text, flags=re.MULTILINE | re.DOTALL)
    for placeholder in {m for a in args for m in PLACEHOLDER.findall(a)}:
        assert f"`{placeholder}`" in prose, f"{doc}: the placeholder {placeholder} is never explained"
    for variant in _variants(args):
        try:
            path, context = _parse(variant)
        except click.ClickException as err:
            pytest.fail(f"{doc}: `trilevel {shlex.join(args)}` is refused: {err.format_message()}")
        shown = CliRunner().invoke(cli, [*path, "--help"], prog_name="trilevel")
        assert shown.exit_code == 0 and f"Usage: trilevel {' '.join(path)}" in shown.output, shown.output
        if path[0] in EXPERIMENT_COMMANDS:
            _resolves(doc, path[0], context.params, tmp_path)


def _resolves(doc: str, command: str, params: dict, tmp_path: Path) -> None:
    """The experiment of a documented run/sweep/submit validates; a submit is refused by nothing but the cluster."""
    closed = f"http://127.0.0.1:{free_port()}"
    where = {"storage": params.get("storage"), "tracking_uri": params.get("tracking_uri")}
    if command == "submit" and params["experiment"] == REPRODUCE:  # `trilevel submit reproduce …`
        with pytest.raises(SubmitError, match="Cannot reach the Ray job server") as refused:
            submit_reproduce(
                address=closed,
                scale=params["scale"],
                seeds=params["seeds"] or 1,
                tables=(params["tables"] or "7,8,9,fig1").split(","),
                overrides=params["overrides"],
                random_draws=params["random_draws"],
                check_tracking=False,
                dry_run=params["dry_run"],
                **where,
            )
        assert closed in str(refused.value), f"{doc}: {refused.value}"
        return
    fields = {"name": params.get("name"), "storage": params.get("storage"), "tracking.uri": params.get("tracking_uri")}
    given = {k: v for k, v in fields.items() if v is not None}
    load_experiment(params["experiment"], params["scale"], params["overrides"], **given)
    if command != "submit":
        return
    with pytest.raises(SubmitError, match="Cannot reach the Ray job server") as refused:
        submit_sweep(
            params["experiment"],
            address=closed,
            scale=params["scale"],
            overrides=params["overrides"],
            name=params.get("name"),
            check_tracking=False,
            dry_run=params.get("dry_run", False),
            seeds=params.get("seeds"),
            random_draws=params.get("random_draws"),
            **where,
        )
    assert closed in str(refused.value), f"{doc}: {refused.value}"


def test_the_readme_names_every_command_of_the_cli():
    readme = DOCS["README.md"].read_text()
    context = click.Context(cli, info_name="trilevel")
    for name in cli.list_commands(context):
        command = cli.get_command(context, name)
        names = [name]
        if isinstance(command, click.Group):
            names = [f"{name} {sub}" for sub in command.list_commands(click.Context(command, parent=context))]
        for full in names:
            assert f"trilevel {full}" in readme, f"README.md never names `trilevel {full}`"


def test_the_command_finder_sees_every_position_and_stops_at_operators():
    assert _invocations("trilevel submit table8 --scale paper  # a comment") == [
        ["submit", "table8", "--scale", "paper"]
    ]
    assert _invocations("kubectl exec -it pod -- trilevel data demo --out /x") == [["data", "demo", "--out", "/x"]]
    assert _invocations("cd x && trilevel status; trilevel jobs|less") == [["status"], ["jobs"]]
    assert _invocations("kubectl get secret trilevel -o yaml") == []
    assert _invocations("docker build -t registry.example.com/trilevel-nas:0.1.0 .") == []
    assert _variants(["status", "[SWEEP]"]) == [["status"], ["status", "SWEEP"]]
    assert _variants(["logs", "<submission-id>", "--address", "http://<head>:8265"]) == [
        ["logs", "submission-id", "--address", "http://127.0.0.1:8265"]
    ]
    with pytest.raises(click.NoSuchOption):
        _parse(["sweep", "table8", "--no-such-option"])
    with pytest.raises(click.MissingParameter):
        _parse(["logs", "--address", "http://127.0.0.1:8265"])
    with pytest.raises(click.UsageError, match="unexpected extra argument"):
        _parse(["jobs", "extra"])
    with pytest.raises(AssertionError, match="no command 'frobnicate'"):
        _parse(["frobnicate"])
