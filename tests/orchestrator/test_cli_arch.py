"""`trilevel arch show|list` as a user runs it."""

from __future__ import annotations

import json

from click.testing import CliRunner

from orchestrator.cli.arch import arch
from search_space.genotype import load_genotype


def test_show_reproduces_table_3_numbers():
    result = CliRunner().invoke(arch, ["show", "trilevel-b-psnr", "--latency-repeats", "0"])
    assert result.exit_code == 0, result.output
    assert "Path: [0, 0, 0, 0, 0, 1]" in result.output
    assert "Params: 0.51 M" in result.output
    assert "GFLOPs (MACs) at 256×256 LR: 33.36" in result.output


def test_show_json_with_latency_on_a_genotype_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(load_genotype("trilevel-b-aim").to_json())
    result = CliRunner().invoke(arch, ["show", str(path), "--json", "--lr-size", "32x32", "--latency-repeats", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["params"] == 264_496
    assert abs(report["gflops"] - 17.334 / 64) < 1e-3
    assert report["cpu_latency_s"] > 0
    assert report["onnx_cpu_latency_s"] > 0  # the zoo network exports, runs in ONNX Runtime and matches PyTorch


def test_backbone_a_reports_both_param_counts():
    result = CliRunner().invoke(arch, ["show", "trilevel-a-vis", "--latency-repeats", "0"])
    assert "Params: 0.37 M (0.34 M without the HRconv" in result.output
    assert "117.39" in result.output


def test_errors_are_messages_not_tracebacks(tmp_path):
    runner = CliRunner()
    result = runner.invoke(arch, ["show", "nope"])
    assert result.exit_code != 0 and "unknown genotype 'nope'" in result.output
    assert "Traceback" not in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "backbone": "B", "path": [0], "cells": [[["conv9x9", 64]]]}')
    result = runner.invoke(arch, ["show", str(bad)])
    assert result.exit_code != 0 and "genotype.cells[0][0].op: unknown op 'conv9x9'" in result.output
    result = runner.invoke(arch, ["show", "trilevel-b-aim", "--lr-size", "big"])
    assert result.exit_code != 0 and "expected HxW" in result.output


def test_list_names_the_zoo():
    result = CliRunner().invoke(arch, ["list"])
    assert result.exit_code == 0
    assert "trilevel-a-vis" in result.output and "trilevel-b-aim" in result.output
