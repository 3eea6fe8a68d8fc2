"""What every `trilevel` command shares: its defaults, its options (each declared once) and its error wrapper.

Options with the same flag mean the same thing in every command, so they are declared here once and a
command takes them as they are (``@SCALE``) or says only what differs for it (``@STORAGE.but(help=…)``):
the flag, its parameter name and its type cannot drift apart between commands. `friendly_errors` is the
one place that decides which errors are the user's to fix (a one-line message, exit 1) and which are
bugs (a traceback). This module imports no command module; they all import it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from orchestrator.experiment import SCALE_HELP, Experiment, TrackingSpec
from orchestrator.reproduce import ALL_TABLES
from orchestrator.tracking import DEFAULT_TRACKING_URI

__all__ = [
    "ADDRESS",
    "DEFAULT_MLFLOW_EXPERIMENT",
    "DEFAULT_STORAGE",
    "DEFAULT_TRACKING",
    "DRY_RUN",
    "EXPERIMENT",
    "EXPERIMENT_OPTIONS",
    "JOB_SERVER",
    "JSON",
    "MLFLOW_EXPERIMENT",
    "MODEL",
    "NAME",
    "NO_REUSE",
    "PREFLIGHT",
    "RANDOM",
    "SCALE",
    "SEEDS",
    "SET",
    "STORAGE",
    "TABLES",
    "TRACKING_URI",
    "VERBOSE",
    "SharedOption",
    "bundle",
    "friendly_errors",
    "user_error_message",
]

F = TypeVar("F", bound=Callable[..., Any])

# The defaults of an experiment (`trilevel sweep` without --storage/--tracking-uri), for the commands that
# read a sweep back (report, status, upscale, export) to find it where the sweep put it.
DEFAULT_TRACKING = DEFAULT_TRACKING_URI
DEFAULT_STORAGE: str = Experiment.model_fields["storage"].default
DEFAULT_MLFLOW_EXPERIMENT: str = TrackingSpec.model_fields["experiment"].default


class SharedOption:
    """A click option declared once; a command uses it as a decorator, or `.but(...)` what differs for it."""

    def __init__(self, *param_decls: str, **attrs: Any) -> None:
        self.param_decls = param_decls
        self.attrs = attrs

    def __call__(self, command: F) -> F:
        return click.option(*self.param_decls, **self.attrs)(command)

    def but(self, **changes: Any) -> SharedOption:
        """The same option with other attributes (help, default, …): the flag and parameter name stay."""
        return SharedOption(*self.param_decls, **(self.attrs | changes))


def bundle(*options: Callable[[F], F]) -> Callable[[F], F]:
    """Options (and arguments) that commands take together, as one decorator: listed top to bottom as `--help`
    shows them, so a bundle reads like the stack of decorators it replaces."""

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


# --- the experiment to run (run, sweep, resume, demo, submit) ---------------------------------------------------
EXPERIMENT = click.argument("experiment")
SCALE = SharedOption("--scale", default="tiny", show_default=True, help=SCALE_HELP)
SET = SharedOption("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a field.")
NAME = SharedOption("--name", default=None, help="Sweep name (default: the experiment's name).")
STORAGE = SharedOption("--storage", default=None, help=f"Local dir or s3://… [default: {DEFAULT_STORAGE}]")
DRY_RUN = SharedOption(
    "--dry-run",
    is_flag=True,
    help="Check data, weights, storage, MLflow and cluster resources, print the plan, start nothing.",
)
NO_REUSE = SharedOption(
    "--no-reuse",
    is_flag=True,
    help="Compute every stage again instead of reusing one stored under the same key (stages.reuse=false).",
)
VERBOSE = SharedOption(
    "-v", "--verbose", is_flag=True, help="Show Ray's, Ray Data's and Tune's output here instead of the live table."
)
PREFLIGHT = SharedOption("--preflight", is_flag=True, help="The --dry-run checks first; start only if they pass.")

# --- replicates and baselines (run, sweep, reproduce, submit) -----------------------------------------------------
SEEDS = SharedOption(
    "--seeds",
    type=click.IntRange(min=1),
    default=None,
    help="Repeat every arm at seeds 0..N-1 (a sweep axis): the report gives n, mean ± std and, per "
    "direction the paper claims, paired differences with a 95% t-interval.",
)
RANDOM = SharedOption(
    "--random",
    "random_draws",
    type=click.IntRange(min=1),
    default=None,
    help="Beside every arm, K random architectures of the same space within ±10% of its searched "
    "GFLOPs, from the same supernet, with the same training (the report's 'random, FLOPs-matched' rows).",
)
# The tables `trilevel reproduce` runs (orchestrator.reproduce.TABLES), local or submitted.
TABLES = SharedOption(
    "--tables",
    default=",".join(ALL_TABLES),
    show_default=True,
    help=f"Which of {', '.join(ALL_TABLES)}, comma-separated.",
)

# --- where: Ray and MLflow -------------------------------------------------------------------------------------
TRACKING_URI = SharedOption("--tracking-uri", default=None, help=f"MLflow tracking URI [default: {DEFAULT_TRACKING}]")
MLFLOW_EXPERIMENT = SharedOption(
    "--mlflow-experiment",
    default=DEFAULT_MLFLOW_EXPERIMENT,
    show_default=True,
    help="MLflow experiment of the sweep, for best:SWEEP.",
)
ADDRESS = SharedOption("--address", default=None, help="Existing Ray cluster (e.g. auto); default: a local Ray.")
# The commands that talk to a cluster's job server (submit, logs, stop, jobs) need its address.
JOB_SERVER = ADDRESS.but(
    required=True,
    envvar="RAY_API_SERVER_ADDRESS",
    show_envvar=True,
    help="Ray job server of the cluster: the head's dashboard port, e.g. http://127.0.0.1:8265 (port-forwarded).",
)

# What `run` and `sweep` take, in this order.
EXPERIMENT_OPTIONS = bundle(
    EXPERIMENT, SCALE, SET, NAME, STORAGE, TRACKING_URI, ADDRESS, DRY_RUN, PREFLIGHT, SEEDS, RANDOM, NO_REUSE, VERBOSE
)

# --- a trained network (upscale, export) and printed output ------------------------------------------------------
MODEL = SharedOption(
    "--model",
    "source",
    required=True,
    metavar="RUN_ID|best:SWEEP|CHECKPOINT_DIR|models:/NAME/VERSION",
    help="A trial's MLflow run id (or runs:/ID/NAME), best:SWEEP (the sweep's best finished trial: highest "
    "validation PSNR of its chosen checkpoint, ties to fewer GFLOPs; never chosen on the test set), "
    "a registered model (models:/NAME/VERSION, "
    "models:/NAME@ALIAS) or a train-stage checkpoint directory.",
)
JSON = SharedOption("--json", "as_json", is_flag=True, help="Print the summary as JSON.")


INTERRUPTED_EXIT = 130  # what a shell reports for a command ended by SIGINT (128 + 2)


# --- errors ------------------------------------------------------------------------------------------------------
# Errors the user can act on (bad input, missing files, unreachable servers, failed jobs) besides ValueError
# (ExperimentError, DataError, bad genotypes), OSError and MLflow's, by module. They are looked up only among
# modules already imported: an error whose class was never imported cannot have been raised, and
# `trilevel arch list` should not import MLflow or Ray to find that out.
_USER_ERRORS = (
    ("orchestrator.tracking.errors", "TrackingUnavailable"),
    ("orchestrator.jobs", "SubmitError"),
    ("orchestrator.export", "ExportError"),
    ("orchestrator.upscale.errors", "UpscaleError"),
    ("orchestrator.sweep_lease", "SweepBusy"),
    ("orchestrator.cluster", "RayUnreachable"),
)


def _imported(module: str, name: str) -> tuple[type[BaseException], ...]:
    loaded = sys.modules.get(module)
    return (getattr(loaded, name),) if loaded is not None else ()  # a moved class fails loudly here (tested)


def user_error_message(err: BaseException) -> str | None:
    """The one-line message for an error the user can act on; None for anything else (a bug keeps its traceback)."""
    if isinstance(err, OSError):  # e.g. pyarrow's filesystem errors: the type says what went wrong
        return f"{type(err).__name__}: {err}"
    if isinstance(err, _imported("mlflow.exceptions", "MlflowException")):
        return err.message  # type: ignore[attr-defined]  # without MLflow's error code
    user_errors = [error for module, name in _USER_ERRORS for error in _imported(module, name)]
    if isinstance(err, (ValueError, *user_errors)):
        return str(err)
    return None


def friendly_errors(command: F) -> F:
    """Decorator: the user's errors (see `user_error_message`) become one-line messages, exit 1, never tracebacks."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as err:
            message = user_error_message(err)
            if message is None:
                raise
            raise click.ClickException(message) from None

    return wrapper  # type: ignore[return-value]
