"""`trilevel arch …`: inspect derived architectures (the paper's zoo or a genotype JSON file)."""

from __future__ import annotations

import json

import click

from orchestrator.cli.common import JSON, friendly_errors
from orchestrator.export import onnx_latency
from search_space.cost import count
from search_space.derived import build_network
from search_space.genotype import Genotype, load_genotype, zoo_names
from search_space.latency import measure_latency


def _parse_size(value: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW such as 256x256, got {value!r}") from None
    if height < 1 or width < 1:
        raise click.BadParameter(f"sizes must be positive, got {value!r}")
    return height, width


def describe(genotype: Genotype, lr_size: tuple[int, int], latency_repeats: int, onnx: bool = True) -> dict:
    """Params, MACs and (optionally) CPU latency of a genotype's network in PyTorch and ONNX Runtime, as plain data.

    Both latencies are timed by one rule (``search_space.latency.median_seconds``) on the same input
    size and threads, so they compare the runtimes, not the measurements.
    """
    cost = count(genotype, lr_size)
    report = {
        "name": genotype.name,
        "genotype": genotype.to_dict(),
        "lr_size": list(lr_size),
        "params": cost.params,
        "params_m": round(cost.params_m, 4),
        "gflops": round(cost.gmacs, 3),
    }
    if genotype.backbone == "A":
        hrconv = genotype.nf * genotype.nf * 9 + genotype.nf
        report["params_m_without_hrconv"] = round((cost.params - hrconv) / 1e6, 4)
    if latency_repeats > 0:
        net = build_network(genotype).eval()
        report["cpu_latency_s"] = round(measure_latency(net, lr_size, latency_repeats), 4)
        if onnx:
            report["onnx_cpu_latency_s"] = round(onnx_latency(net, genotype.scale, lr_size, latency_repeats), 4)
    return report


@click.group()
def arch() -> None:
    """Inspect derived architectures."""


@arch.command("list")
def list_zoo() -> None:
    """Genotypes shipped with the package (the paper's Tables 1-4)."""
    for name in zoo_names():
        genotype = load_genotype(name)
        click.echo(f"{name:18s} backbone {genotype.backbone}  path {list(genotype.path)}")


@arch.command("show")
@click.argument("name_or_file")
@JSON.but(help="Print a JSON report instead of the table.")
@click.option("--lr-size", default="256x256", show_default=True, help="LR input size HxW for GFLOPs and latency.")
@click.option(
    "--latency-repeats", default=3, show_default=True, type=click.IntRange(min=0), help="0 skips the latency runs."
)
@click.option(
    "--onnx/--no-onnx",
    default=True,
    show_default=True,
    help="Also time the network exported to ONNX, in ONNX Runtime (the export takes seconds).",
)
@friendly_errors
def show(name_or_file: str, as_json: bool, lr_size: str, latency_repeats: int, onnx: bool) -> None:
    """Show NAME (see `trilevel arch list`) or a genotype FILE.json: table, params, GFLOPs, latency."""
    genotype = load_genotype(name_or_file)  # a bad name or file: a ValueError, a message
    size = _parse_size(lr_size)
    report = describe(genotype, size, latency_repeats, onnx)  # ExportError: no export, or ONNX Runtime disagrees
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(genotype.table())
    click.echo("")
    params = f"{report['params_m']:.2f} M"
    if "params_m_without_hrconv" in report:
        params += f" ({report['params_m_without_hrconv']:.2f} M without the HRconv, the paper's convention)"
    click.echo(f"Params: {params}")
    click.echo(f"GFLOPs (MACs) at {size[0]}×{size[1]} LR: {report['gflops']:.2f}")
    if "cpu_latency_s" in report:
        line = f"CPU latency, one {size[0]}×{size[1]} LR input: {report['cpu_latency_s'] * 1000:.0f} ms (PyTorch)"
        if "onnx_cpu_latency_s" in report:
            line += f", {report['onnx_cpu_latency_s'] * 1000:.0f} ms (ONNX Runtime)"
        click.echo(line)
