"""orchestrator.report and `trilevel report|status` against real MLflow runs in SQLite, shaped like a sweep.

The runs follow the tracking contract (sweep parent, trial children with `trilevel.*` tags, final metrics)
and carry the numbers of the supplementary's Table 8 (λ sweep) and Table 7 (combiner sweep), so the
report must reproduce the paper's rows.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from PIL import Image

from orchestrator import cli_report
from orchestrator.report import (
    MISSING,
    TrialRow,
    build_report,
    collect,
    pareto_front,
    pareto_png,
    table,
    to_csv,
    to_markdown,
)

EXPERIMENT = "trilevel"
LAMBDA = "stages.search.lambda_order"
COMBINER = "search_space.combiner"
SETS = ("Set5", "Set14")

# Table 8: λ → (path, params (M), GFLOPs, PSNR Set5, PSNR Set14)
TABLE8 = {
    "0.0": ([0, 0, 1, 0, 0, 0, 1], 0.58, 184.08, 30.32, 27.21),
    "0.01": ([0, 0, 1, 0, 0, 1], 0.52, 169.69, 30.34, 27.20),
    "0.1": ([0, 0, 0, 1, 0, 1], 0.34, 117.39, 30.34, 27.29),
}
# Table 7: combiner → (path, params (M), GFLOPs, PSNR Set5, PSNR Set14)
TABLE7 = {
    "softmax": ([0, 0, 1, 0, 1], 0.47, 154.80, 30.34, 27.28),
    "sparsestmax": ([0, 0, 0, 1, 0, 1], 0.34, 117.39, 30.34, 27.29),
}
TABLE7_LABELS = {"softmax": "Softmax", "sparsestmax": "Sparsestmax"}


def _run(client: MlflowClient, experiment_id: str, name: str, tags: dict, params: dict | None = None) -> str:
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    if params:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run_id


def _trial(client, experiment_id, parent, sweep, axis, value, numbers=None, *, finished=True) -> str:
    trial = f"{axis.rsplit('.', 1)[-1]}={value}"
    tags = {
        "trilevel.kind": "trial",
        "trilevel.sweep": sweep,
        "trilevel.trial": trial,
        f"trilevel.axis.{axis}": value,
        "trilevel.seed": "0",
    }
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = _run(client, experiment_id, trial, tags, {f"axis.{axis}": value, "search_space.levels": "trilevel"})
    if numbers is not None:
        path, params_m, gflops, set5, set14 = numbers
        client.set_tag(run_id, "trilevel.path", str(path))  # what the trial writes: "[0, 0, 0, 1, 0, 1]"
        values = {"params_m": params_m, "gflops": gflops, "latency_s": 0.01}
        if finished:
            values |= {"psnr/Set5": set5, "psnr/Set14": set14, "ssim/Set5": 0.85, "ssim/Set14": 0.74}
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in values.items()])
    for stage in ("pretrain", "search", "train", "evaluate")[: 4 if finished else 2]:
        stage_tags = {
            "trilevel.kind": "stage",
            "trilevel.sweep": sweep,
            "trilevel.trial": trial,
            "trilevel.stage": stage,
            "mlflow.parentRunId": run_id,
        }
        stage_run = _run(client, experiment_id, f"{trial}/{stage}", stage_tags)
        if finished or stage == "pretrain":
            client.set_terminated(stage_run, "FINISHED")
    if finished:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _parent(client, experiment_id, sweep, axis, values) -> str:
    tags = {"trilevel.kind": "sweep", "trilevel.sweep": sweep}
    return _run(client, experiment_id, sweep, tags, {f"sweep.{axis}": str(values), "name": sweep})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """One SQLite store (its schema takes seconds) holding three sweeps:

    table8 (parent + 3 finished λ trials, created out of order), table7 (2 combiner trials, no parent run)
    and running (parent + a finished and an unfinished trial).
    """
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    parent8 = _parent(client, experiment_id, "table8", LAMBDA, [0.0, 0.01, 0.1])
    for value in ("0.1", "0.0", "0.01"):
        _trial(client, experiment_id, parent8, "table8", LAMBDA, value, TABLE8[value])
    client.set_terminated(parent8, "FINISHED")
    for value in ("sparsestmax", "softmax"):
        _trial(client, experiment_id, None, "table7", COMBINER, value, TABLE7[value])
    parent_running = _parent(client, experiment_id, "running", LAMBDA, [0.0, 0.1])
    _trial(client, experiment_id, parent_running, "running", LAMBDA, "0.0", TABLE8["0.0"])
    _trial(client, experiment_id, parent_running, "running", LAMBDA, "0.1", None, finished=False)
    return {"uri": uri, "root": root, "client": client, "parents": {"table8": parent8, "running": parent_running}}


def _cells(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in markdown.strip().splitlines()]


def _row(trial: str, axes: dict, path, params_m, gflops, psnr: dict, **kw) -> TrialRow:
    fields = {"ssim": {}, "latency_s": None, "status": "FINISHED", "run_id": trial} | kw
    return TrialRow(trial=trial, axes=axes, path=path, params_m=params_m, gflops=gflops, psnr=psnr, **fields)


# --- collect / table ---------------------------------------------------------------------------
def test_collect_reads_the_trials_in_grid_order(store):
    rows = collect(store["uri"], EXPERIMENT, "table8")
    assert [r.trial for r in rows] == ["lambda_order=0.0", "lambda_order=0.01", "lambda_order=0.1"]
    first = rows[0]
    assert first.axes == {LAMBDA: "0.0"}
    assert first.path == [0, 0, 1, 0, 0, 0, 1]
    assert (first.params_m, first.gflops, first.latency_s) == (0.58, 184.08, 0.01)
    assert list(first.psnr) == ["Set5", "Set14"]  # natural order, not "Set14" < "Set5"
    assert first.psnr == {"Set5": 30.32, "Set14": 27.21} and first.ssim == {"Set5": 0.85, "Set14": 0.74}
    assert all(r.status == "FINISHED" and r.evaluated and len(r.run_id) == 32 for r in rows)


def test_table_reproduces_table8(store):
    rendered = table(collect(store["uri"], EXPERIMENT, "table8"), {})
    assert list(rendered[0]) == ["λ", "Path", "Params (M)", "GFLOPs", "PSNR Set5", "PSNR Set14"]
    assert [list(r.values()) for r in rendered] == [
        ["0", "[0,0,1,0,0,0,1]", "0.58", "184.08", "30.32", "27.21"],
        ["0.01", "[0,0,1,0,0,1]", "0.52", "169.69", "30.34", "27.20"],
        ["0.1", "[0,0,0,1,0,1]", "0.34", "117.39", "30.34", "27.29"],
    ]
    markdown = to_markdown(rendered)
    assert " | ".join(_cells(markdown)[-1]) == "0.1 | [0,0,0,1,0,1] | 0.34 | 117.39 | 30.34 | 27.29"
    assert table(collect(store["uri"], EXPERIMENT, "table8"), axis_title="Ordering λ")[0]["Ordering λ"] == "0"


def test_markdown_and_csv(store):
    rendered = table(collect(store["uri"], EXPERIMENT, "table8"), {})
    lines = to_markdown(rendered).splitlines()
    assert len(lines) == 5 and all(line.startswith("|") and line.endswith("|") for line in lines)
    assert _cells(lines[0])[0] == ["λ", "Path", "Params (M)", "GFLOPs", "PSNR Set5", "PSNR Set14"]
    assert re.fullmatch(r"\|-+\|-+\|(-+:\|){4}", lines[1])  # Path left-aligned, numbers right-aligned
    assert len({len(line) for line in lines}) == 1  # padded: reads as a table in a terminal too
    parsed = list(csv.DictReader(io.StringIO(to_csv(rendered))))
    assert parsed == rendered
    assert to_markdown([]) == "" and to_csv([]) == ""


def test_labels_name_the_methods_of_a_combiner_sweep(store):
    rendered = table(collect(store["uri"], EXPERIMENT, "table7"), TABLE7_LABELS)
    assert [(r["Method"], r["Path"], r["Params (M)"], r["GFLOPs"], r["PSNR Set14"]) for r in rendered] == [
        ("Softmax", "[0,0,1,0,1]", "0.47", "154.80", "27.28"),
        ("Sparsestmax", "[0,0,0,1,0,1]", "0.34", "117.39", "27.29"),
    ]
    assert table(collect(store["uri"], EXPERIMENT, "table7"))[0]["Method"] == "softmax"  # no labels: raw values


def test_table9_marks_the_fixed_path_and_follows_the_labels_order():
    axis = "search_space.levels"
    rows = [
        _row("levels=trilevel", {axis: "trilevel"}, [0, 0, 0, 1, 0, 1], 0.34, 117.39, {"Set5": 30.34}),
        _row(
            "levels=bilevel", {axis: "bilevel"}, [0, 0, 0, 0, 0, 1, 1], 0.52, 115.39, {"Set5": 30.32}, path_fixed=True
        ),
    ]
    rendered = table(rows, {"bilevel": "BilevelNAS", "trilevel": "TrilevelNAS"})
    assert [(r["Method"], r["Path"]) for r in rendered] == [
        ("BilevelNAS", "[0,0,0,0,0,1,1]*"),
        ("TrilevelNAS", "[0,0,0,1,0,1]"),
    ]


def test_several_axes_are_named_by_trial_id():
    axes = {COMBINER: "softmax", LAMBDA: "0.1"}
    rows = [_row("combiner=softmax,lambda_order=0.1", axes, None, None, None, {})]
    rendered = table(rows, TABLE7_LABELS)
    assert rendered[0]["Method"] == "combiner=softmax,lambda_order=0.1"
    assert rendered[0]["Path"] == MISSING


def test_an_unfinished_trial_shows_dashes_and_its_status(store):
    rows = collect(store["uri"], EXPERIMENT, "running")
    assert [(r.trial, r.status, r.evaluated) for r in rows] == [
        ("lambda_order=0.0", "FINISHED", True),
        ("lambda_order=0.1", "RUNNING", False),
    ]
    rendered = table(rows)
    assert rendered[1] == {
        "λ": "0.1",
        "Path": MISSING,
        "Params (M)": MISSING,
        "GFLOPs": MISSING,
        "PSNR Set5": MISSING,
        "PSNR Set14": MISSING,
        "Status": "RUNNING",
    }
    assert rendered[0]["Status"] == "FINISHED"
    assert list(csv.reader(io.StringIO(to_csv(rendered))))[2] == ["0.1", "", "", "", "", "", "RUNNING"]


def test_unknown_sweep_is_a_clear_error(store, tmp_path):
    with pytest.raises(ValueError, match=r"no tracked runs for sweep 'nope' in experiment 'trilevel' at URI sqlite:"):
        collect(store["uri"], EXPERIMENT, "nope")
    with pytest.raises(ValueError, match=r"experiment 'other' .* MLflow experiment does not exist"):
        collect(store["uri"], "other", "table8")
    missing = tmp_path / "typo.db"
    with pytest.raises(ValueError, match="no database file"):
        collect(f"sqlite:///{missing}", EXPERIMENT, "table8")
    assert not missing.exists()  # looking did not create an empty database


# --- plot and files ----------------------------------------------------------------------------
def test_pareto_front():
    points = [(184.08, 30.32), (169.69, 30.34), (117.39, 30.34), (200.0, 30.5), (120.0, 30.0)]
    assert pareto_front(points) == [2, 3]
    assert pareto_front([(1.0, 1.0)]) == [0] and pareto_front([]) == []


def _png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_pareto_png_is_a_png_for_many_one_and_no_plottable_trials(store, tmp_path):
    rows = collect(store["uri"], EXPERIMENT, "table8")
    width, height = _png(pareto_png(rows, tmp_path / "all.png", "Set14"))
    assert width > 0 and height > 0
    assert _png(pareto_png(rows[:1], tmp_path / "one.png"))[0] > 0
    running = collect(store["uri"], EXPERIMENT, "running")  # one trial without PSNR
    assert _png(pareto_png(running, tmp_path / "partial.png"))[0] > 0
    assert _png(pareto_png(running[1:], tmp_path / "none.png"))[0] > 0


def test_build_report_writes_files_and_logs_them_to_the_parent_run(store, tmp_path):
    files = build_report(store["uri"], EXPERIMENT, "table8", {}, tmp_path / "out")
    assert files.parent_run_id == store["parents"]["table8"]
    assert "| 0.1  | [0,0,0,1,0,1]   |" in files.markdown.read_text() and "pareto.png" in files.markdown.read_text()
    assert files.csv.read_text().splitlines()[0] == "λ,Path,Params (M),GFLOPs,PSNR Set5,PSNR Set14"
    assert _png(files.png)[0] > 0
    logged = store["client"].list_artifacts(files.parent_run_id, "report")
    assert sorted(f.path for f in logged) == ["report/pareto.png", "report/report.csv", "report/report.md"]
    assert all(f.file_size > 0 for f in logged)


def test_build_report_without_a_parent_run_warns_and_still_writes(store, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="orchestrator.report"):
        files = build_report(store["uri"], EXPERIMENT, "table7", TABLE7_LABELS, tmp_path)
    assert files.parent_run_id is None
    assert "no parent run" in caplog.text
    assert files.markdown.exists() and files.csv.exists() and files.png.exists()


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_report_uses_the_saved_experiment_for_labels_and_tracking(store, tmp_path, monkeypatch):
    from orchestrator.experiment import load_experiment

    monkeypatch.chdir(tmp_path)
    experiment = load_experiment("table7", "tiny", (), **{"tracking.uri": store["uri"]})
    (tmp_path / "runs" / "table7").mkdir(parents=True)
    (tmp_path / "runs" / "table7" / "experiment.yaml").write_text(yaml.safe_dump(experiment.model_dump(mode="json")))
    result = CliRunner().invoke(cli_report.report, ["table7", "--storage", "runs"])
    assert result.exit_code == 0, result.output
    rows = _cells(result.stdout.split("\n\n")[0])
    assert rows[0] == ["Method", "Path", "Params (M)", "GFLOPs", "PSNR Set5", "PSNR Set14"]
    assert rows[2:] == [
        ["Softmax", "[0,0,1,0,1]", "0.47", "154.80", "30.34", "27.28"],
        ["Sparsestmax", "[0,0,0,1,0,1]", "0.34", "117.39", "30.34", "27.29"],
    ]
    report_dir = Path("runs") / "table7" / "report"
    assert f"CSV:      {report_dir / 'report.csv'}" in result.stdout
    assert f"Plot:     {report_dir / 'pareto.png'}" in result.stdout
    assert (tmp_path / report_dir / "pareto.png").exists()


def test_cli_report_without_storage_and_print_report(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "elsewhere"
    args = ["table8", "--tracking-uri", store["uri"], "--mlflow-experiment", EXPERIMENT, "--out", str(out)]
    result = CliRunner().invoke(cli_report.report, args)
    assert result.exit_code == 0, result.output
    assert "0.1 | [0,0,0,1,0,1] | 0.34 | 117.39 | 30.34 | 27.29" in re.sub(r" +", " ", result.stdout)
    assert "reporting raw axis values" in result.stderr
    assert f"Logged to MLflow run {store['parents']['table8']}" in result.stdout
    assert (out / "report.csv").exists()

    cli_report.print_report("running", str(tmp_path / "storage"), store["uri"])  # what `trilevel demo` calls
    assert (tmp_path / "storage" / "running" / "report" / "pareto.png").exists()


def test_cli_errors_are_messages(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli_report.report, ["nope", "--tracking-uri", store["uri"]])
    assert result.exit_code == 1
    assert "Error: no tracked runs for sweep 'nope' in experiment 'trilevel' at URI sqlite:" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    result = CliRunner().invoke(cli_report.status, ["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 1 and "Error: no MLflow database" in result.output


def test_cli_status_lists_sweeps_then_trials(store):
    result = CliRunner().invoke(cli_report.status, ["--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    sweeps = {row[0]: row for row in _cells(result.stdout)[2:]}
    assert _cells(result.stdout)[0] == ["Sweep", "Status", "Started", "Trials"]
    assert sweeps["table8"][1] == "FINISHED" and sweeps["table8"][3] == "3/3"
    assert sweeps["running"][1] == "RUNNING" and sweeps["running"][3] == "1/2"
    assert sweeps["table7"][1:] == [MISSING, MISSING, "2/2"]  # trials tracked without a parent run
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", sweeps["table8"][2])

    result = CliRunner().invoke(cli_report.status, ["running", "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Sweep running: 1/2 trials finished")
    table_rows = _cells(result.stdout.split("\n\n", 1)[1])
    assert table_rows[0] == ["Trial", "Status", "Stage", "Path", "Params (M)", "GFLOPs", "PSNR Set5", "PSNR Set14"]
    assert table_rows[2][:4] == ["lambda_order=0.0", "FINISHED", "evaluate (FINISHED)", "[0,0,1,0,0,0,1]"]
    assert table_rows[2][4:] == ["0.58", "184.08", "30.32", "27.21"]
    assert table_rows[3] == ["lambda_order=0.1", "RUNNING", "search (RUNNING)", *[MISSING] * 5]
