"""`trilevel upscale`: super-resolve images with a trained network, from a trial's run, the registry or a checkpoint.

The end of the pipeline a user sees: a sweep leaves trained networks in MLflow (and train-stage
checkpoints in storage); this command turns one into upscaled PNGs. All the work is in
:mod:`orchestrator.upscale`; here are the options, progress on stderr, and errors as messages
(never tracebacks). Bad inputs are found before the model is loaded; with ``--keep-going``
unreadable images are skipped and the command still exits non-zero at the end.
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.common import DEFAULT_TRACKING, MLFLOW_EXPERIMENT, MODEL, TRACKING_URI, friendly_errors
from orchestrator.upscale.files import collect_images, upscale_files
from orchestrator.upscale.model_source import open_model
from orchestrator.upscale.tiled import receptive_radius, resolve_device

__all__ = ["upscale"]


def _err(message: str) -> None:
    click.echo(message, err=True)


@click.command("upscale")
@MODEL
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (created); writes <stem>_x<scale>.png.",
)
@click.option(
    "--tile",
    default=256,
    show_default=True,
    type=click.IntRange(min=0),
    help="LR tile size in pixels, bounds memory; 0 = whole image at once.",
)
@click.option(
    "--overlap",
    default=24,
    show_default=True,
    type=click.IntRange(min=0),
    help="Context pixels around each tile; seams vanish once it reaches the receptive field.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@TRACKING_URI
@MLFLOW_EXPERIMENT
@click.option("--keep-going", is_flag=True, help="Skip unreadable images (reported; exit status 1 at the end).")
@friendly_errors
def upscale(
    source: str,
    inputs: tuple[Path, ...],
    out_dir: Path,
    tile: int,
    overlap: int,
    device: str,
    tracking_uri: str | None,
    mlflow_experiment: str,
    keep_going: bool,
) -> None:
    """Upscale image files and folders of PNG/JPEG (INPUTS) with a trained network."""
    resolve_device(device)
    files = collect_images(inputs, report=_err)
    loaded = open_model(source, tracking_uri or DEFAULT_TRACKING, mlflow_experiment)
    model, scale = loaded.module, loaded.scale
    genotype = getattr(model, "genotype", None)
    name = f" {genotype.name}" if getattr(genotype, "name", "") else ""
    _err(f"Model{name} from {source}: ×{scale}")
    if loaded.note:
        _err(f"Using the {loaded.note}")
    radius = receptive_radius(model)
    if tile and overlap < radius:
        _err(
            f"Note: --overlap {overlap} is below this network's receptive-field bound ({radius} px): "
            f"tiled results may differ very slightly at tile seams; --overlap {radius} makes them exact."
        )
    written = upscale_files(
        model,
        scale,
        files,
        out_dir,
        tile=tile,
        overlap=overlap,
        device=device,
        keep_going=keep_going,
        report=_err,
    )
    click.echo(f"Wrote {len(written)} image(s) to {out_dir}")
    if len(written) < len(files):
        raise click.ClickException(f"{len(files) - len(written)} of {len(files)} image(s) could not be upscaled")
