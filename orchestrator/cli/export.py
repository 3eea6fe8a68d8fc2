"""`trilevel export`: a trained network as a file to deploy (ONNX, any image size), optionally logged to its run.

The model is named as everywhere else (``--model``, as for `trilevel upscale`: a run id, ``best:SWEEP``,
a registered model, a checkpoint); the work is in :mod:`orchestrator.export`. Errors are one-line
messages, never tracebacks.
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.common import (
    DEFAULT_TRACKING,
    MLFLOW_EXPERIMENT,
    MODEL,
    TRACKING_URI,
    friendly_errors,
    user_error_message,
)

__all__ = ["export"]


def _dims(dims: list[str | int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


@click.command("export")
@MODEL
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True, help="File format.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file to write (e.g. model.onnx).",
)
@click.option("--opset", type=click.IntRange(min=18), default=None, help="ONNX opset [default: the exporter's].")
@click.option("--log", "log_to_run", is_flag=True, help="Also log the file to the model's MLflow run (under export/).")
@TRACKING_URI
@MLFLOW_EXPERIMENT
@friendly_errors
def export(
    source: str,
    fmt: str,
    out: Path,
    opset: int | None,
    log_to_run: bool,
    tracking_uri: str | None,
    mlflow_experiment: str,
) -> None:
    """Export a trained network to FORMAT with dynamic batch, height and width, checked against PyTorch."""
    from mlflow.exceptions import MlflowException

    from orchestrator.export import export_onnx, log_export
    from orchestrator.upscale.model_source import open_model

    uri = tracking_uri or DEFAULT_TRACKING
    loaded = open_model(source, uri, mlflow_experiment)
    if log_to_run and loaded.run_id is None:
        raise click.ClickException(
            f"--log: the model {source} did not come from an MLflow run; pass its run id, runs:/…, models:/… "
            "or best:SWEEP"
        )
    if loaded.note:
        click.echo(f"Using the {loaded.note}", err=True)
    done = export_onnx(loaded.module, out, loaded.scale, opset=opset)
    click.echo(
        f"Wrote {done.path} ({fmt.upper()} opset {done.opset}, ×{loaded.scale}): "
        f"input lr {_dims(done.input_shape)} → sr {_dims(done.output_shape)}"
    )
    click.echo(f"Checked in ONNX Runtime on a 1×3×37×53 input: max |ONNX - PyTorch| = {done.max_abs_error:.1e}")
    if log_to_run:
        assert loaded.run_id is not None
        try:
            artifact = log_export(uri, loaded.run_id, done.path)
        except (MlflowException, OSError) as err:  # the file is written; say which run did not take it
            message = user_error_message(err)
            raise click.ClickException(f"--log: MLflow run {loaded.run_id} at {uri}: {message}") from None
        click.echo(f"Logged to MLflow run {loaded.run_id} as {artifact}")
