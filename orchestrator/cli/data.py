"""`trilevel data ...`: prepare image folders (or the built-in demo photos) into Parquet shards.

The commands are thin: they parse options, call ``workers.shards`` and print its summary. Problems
with the data come back as ``click.ClickException`` with the message (no traceback); per-image skips
and conversions are echoed to stderr as they happen and listed again in the final summary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from orchestrator.cli.common import JSON, friendly_errors

if TYPE_CHECKING:
    from workers.shards.writer import PrepareSummary

__all__ = ["data"]


class _EchoHandler(logging.Handler):
    """Echo ``workers.shards`` log records (skips, conversions, progress) to stderr while it runs."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


@contextmanager
def _echo_progress() -> Iterator[None]:
    logger = logging.getLogger("workers.shards")
    handler = _EchoHandler(level=logging.INFO)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _parse_subimages(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        size, step = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected SIZE/STEP such as 480/240, got {value!r}") from None
    if size <= 0 or step <= 0:
        raise click.BadParameter(f"SIZE and STEP must be positive, got {value!r}")
    return size, step


def _parse_lr_dirs(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in value:
        src, sep, lr = item.partition("=")
        if not sep or not src or not lr:
            raise click.BadParameter(f"expected SRC=LR_DIR, got {item!r}")
        out[src] = lr
    return out


def _print(summary: PrepareSummary, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=1))
    else:
        click.echo("\n".join(summary.lines()))


@click.group()
def data() -> None:
    """Prepare SR data sets into Parquet shards (local folders or s3://, gs://, file:// URIs)."""


@data.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, help="Output folder or URI (s3://bucket/prefix, file:///abs/path).")
@click.option("--scale", default=4, show_default=True, type=click.IntRange(min=1), help="SR factor.")
@click.option(
    "--subimages",
    default=None,
    callback=_parse_subimages,
    metavar="SIZE/STEP",
    help="Cut BasicSR-style HR sub-images, e.g. 480/240 (faster reads).",
)
@click.option("--strict", is_flag=True, help="Any skipped file is an error.")
@click.option(
    "--lr-dir",
    "lr_dirs",
    multiple=True,
    callback=_parse_lr_dirs,
    metavar="SRC=LR_DIR",
    help="Official LR folder for a source (default: DIV2K layout X_HR -> X_LR_bicubic/X<scale>).",
)
@click.option(
    "--compute-lr",
    is_flag=True,
    help="Store each row's MATLAB-bicubic LR where no official LR exists (readers skip the bicubic every pass).",
)
@click.option(
    "--encoding",
    type=click.Choice(["png", "raw"]),
    default="png",
    show_default=True,
    help="How pixels are stored: png (smallest), or raw uint8 in compressed Parquet pages (the same pixels, "
    "~1.5x the bytes, ~16x cheaper to decode: for a GPU's data feed).",
)
@click.option("--rows-per-shard", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--min-size", default=None, type=click.IntRange(min=1), help="Minimum HR side [32*scale].")
@JSON
@friendly_errors
def prepare(
    sources: tuple[str, ...],
    out: str,
    scale: int,
    subimages: tuple[int, int] | None,
    strict: bool,
    lr_dirs: dict[str, str],
    compute_lr: bool,
    encoding: str,
    rows_per_shard: int,
    min_size: int | None,
    as_json: bool,
) -> None:
    """Prepare the HR image folders SOURCES (PNG/JPEG) into shards at --out."""
    from workers.shards.folders import prepare_dataset

    with _echo_progress():
        summary = prepare_dataset(
            list(sources),
            out,
            scale=scale,
            subimages=subimages,
            rows_per_shard=rows_per_shard,
            lr_dirs=lr_dirs or None,
            compute_lr=compute_lr,
            encoding=encoding,
            strict=strict,
            min_size=min_size,
        )
    _print(summary, as_json)


@data.command()
@click.option("--out", required=True, help="Output folder or URI; gets train/, val/ and test/.")
@JSON
@friendly_errors
def demo(out: str, as_json: bool) -> None:
    """Write the built-in demo data set (the photographs scikit-image and matplotlib ship, no download)."""
    from workers.shards.demo import write_demo_dataset

    with _echo_progress():
        summary = write_demo_dataset(out)
    _print(summary, as_json)


@data.command()
@click.argument("path")
@friendly_errors
def info(path: str) -> None:
    """Show a prepared data set: rows, images, shards, and its search split (chi_1 / chi_2)."""
    from workers.pipeline import image_ids, split_image_ids
    from workers.shards.format import read_manifest

    m = read_manifest(path)
    w, a = split_image_ids(image_ids(path))
    opts = m.data["options"]
    click.echo(f"{path}: {m.images} images, {m.rows} rows, {len(m.shards)} shards, {m.data['bytes']:,} bytes")
    click.echo(
        f"  scale x{m.scale}, subimages {opts.get('subimages')}, {m.data['with_lr']} rows with stored LR, "
        f"{m.encoding} pixels"
    )
    click.echo(f"  search split: chi_1 (weights) {len(w)} images, chi_2 (architecture) {len(a)} images")
    click.echo(f"  skipped at preparation: {len(m.data['skipped'])}, converted: {len(m.data['converted'])}")
