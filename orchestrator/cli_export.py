"""`trilevel export`: a trained network as a file to deploy (ONNX, any image size), optionally logged to its run.

The model is named as everywhere else (:mod:`orchestrator.cli_upscale`: a run id, ``best:SWEEP``, a
registered model, a checkpoint); the work is in :mod:`orchestrator.export`. Errors are one-line
messages, never tracebacks.
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli_upscale import DEFAULT_MLFLOW_EXPERIMENT, DEFAULT_TRACKING, MODEL_HELP, MODEL_METAVAR

__all__ = ["export"]


def _dims(dims: list[str | int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


@click.command("export")
@click.option("--model", "source", required=True, metavar=MODEL_METAVAR, help=MODEL_HELP)
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True, help="File format.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file to write (e.g. model.onnx).",
)
@click.option("--opset", type=click.IntRange(min=18), default=None, help="ONNX opset [default: the exporter's].")
@click.option("--log", "log_to_run", is_flag=True, help="Also log the file to the model's MLflow run (under export/).")
@click.option("--tracking-uri", default=None, help=f"MLflow tracking URI [default: {DEFAULT_TRACKING}]")
@click.option(
    "--mlflow-experiment",
    default=DEFAULT_MLFLOW_EXPERIMENT,
    show_default=True,
    help="MLflow experiment of the sweep, for best:SWEEP.",
)
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

    from orchestrator.export import ExportError, export_onnx, log_export
    from orchestrator.upscale.errors import UpscaleError
    from orchestrator.upscale.model_source import open_model

    uri = tracking_uri or DEFAULT_TRACKING
    try:
        loaded = open_model(source, uri, mlflow_experiment)
        if log_to_run and loaded.run_id is None:
            raise click.ClickException(
                f"--log: the model {source} did not come from an MLflow run; pass its run id, runs:/…, models:/… "
                "or best:SWEEP"
            )
        if loaded.note:
            click.echo(f"Using the {loaded.note}", err=True)
        done = export_onnx(loaded.module, out, loaded.scale, opset=opset)
    except (UpscaleError, ExportError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(
        f"Wrote {done.path} ({fmt.upper()} opset {done.opset}, ×{loaded.scale}): "
        f"input lr {_dims(done.input_shape)} → sr {_dims(done.output_shape)}"
    )
    click.echo(f"Checked in ONNX Runtime on a 1×3×37×53 input: max |ONNX - PyTorch| = {done.max_abs_error:.1e}")
    if log_to_run:
        assert loaded.run_id is not None
        try:
            artifact = log_export(uri, loaded.run_id, done.path)
        except (MlflowException, OSError) as err:
            message = err.message if isinstance(err, MlflowException) else str(err)
            raise click.ClickException(f"--log: MLflow run {loaded.run_id} at {uri}: {message}") from None
        click.echo(f"Logged to MLflow run {loaded.run_id} as {artifact}")
