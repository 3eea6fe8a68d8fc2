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

from orchestrator.cli import report as cli_report
from orchestrator.cli import sweep_report
from orchestrator.paper import PAPER_TABLES, paper_row, paper_table
from orchestrator.report.build import build_report
from orchestrator.report.pareto import pareto_figure, pareto_front, pareto_png
from orchestrator.report.rows import Baselines, TrialRow, baselines, best_row, collect, scored_test_sets
from orchestrator.report.runs import ui_hint, ui_url
from orchestrator.report.table import MISSING, below_bicubic, table, to_csv, to_markdown
from orchestrator.tracking.champion import Score

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
# A tiny-scale sweep on the demo photographs, with the baselines each evaluation measures: λ=0 is below bicubic.
DEMO_BICUBIC, DEMO_TEACHER = 28.17, 29.50
DEMO = {
    "0.0": (([0, 1], 0.02, 1.50, None, None), 27.00),
    "0.1": (([0, 1], 0.02, 1.20, None, None), 28.90),
}


def _run(client: MlflowClient, experiment_id: str, name: str, tags: dict, params: dict | None = None) -> str:
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    if params:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run_id


def _trial(client, experiment_id, parent, sweep, axis, value, numbers=None, *, finished=True, extra=None) -> str:
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
            values |= extra or {"psnr/Set5": set5, "psnr/Set14": set14, "ssim/Set5": 0.85, "ssim/Set14": 0.74}
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in values.items()])
    for stage in ("pretrain", "search", "train", "evaluate")[: 4 if finished else 2]:
        stage_tags = {
            "trilevel.kind": "stage",
            "trilevel.sweep": sweep,
            "trilevel.trial": trial,
            "trilevel.stage": stage,
            "mlflow.parentRunId": run_id,
        }
        if stage != "evaluate":  # the stage store's tag: the unfinished trial reused its pretrain
            stage_tags["trilevel.stage.origin"] = "reused" if not finished and stage == "pretrain" else "computed"
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
    """One SQLite store (its schema takes seconds) holding four sweeps:

    table8 (parent + 3 finished λ trials, created out of order), table7 (2 combiner trials, no parent run),
    running (parent + a finished and an unfinished trial) and demo (2 trials scored on "demo" with their bicubic
    and teacher baselines, one below bicubic).
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
    parent_demo = _parent(client, experiment_id, "demo", LAMBDA, [0.0, 0.1])
    for value, (numbers, psnr) in DEMO.items():
        extra = {"psnr/demo": psnr, "ssim/demo": 0.7, "psnr_bicubic/demo": DEMO_BICUBIC, "ssim_bicubic/demo": 0.69}
        extra |= {"psnr_teacher/demo": DEMO_TEACHER, "ssim_teacher/demo": 0.8}
        _trial(client, experiment_id, parent_demo, "demo", LAMBDA, value, numbers, extra=extra)
    client.set_terminated(parent_demo, "FINISHED")
    parent_running = _parent(client, experiment_id, "running", LAMBDA, [0.0, 0.1])
    _trial(client, experiment_id, parent_running, "running", LAMBDA, "0.0", TABLE8["0.0"])
    _trial(client, experiment_id, parent_running, "running", LAMBDA, "0.1", None, finished=False)
    parents = {"table8": parent8, "running": parent_running, "demo": parent_demo}
    return {"uri": uri, "root": root, "client": client, "parents": parents}


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
    paper = "Paper Path,Paper Params (M),Paper GFLOPs,Paper PSNR Set5,Paper PSNR Set14"
    assert files.csv.read_text().splitlines()[0] == f"λ,Path,Params (M),GFLOPs,PSNR Set5,PSNR Set14,{paper}"
    assert list(csv.reader(io.StringIO(files.csv.read_text())))[3][6:] == [  # Table 8's λ = 0.1 row
        "[0,0,0,1,0,1]",
        "0.34",
        "117.39",
        "30.34",
        "27.29",
    ]
    assert files.paper == "Table 8" and "Table 8 of the supplementary" in files.markdown.read_text()
    assert files.warnings == []  # trials without baseline metrics (tracked before they existed) are not judged
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
    rows = _cells(result.stdout.split("\n\n")[0].split("\nPaper columns")[0])
    ours = ["Method", "Path", "Params (M)", "GFLOPs", "PSNR Set5", "PSNR Set14"]
    assert rows[0] == [*ours, "Paper Path", "Paper Params (M)", "Paper GFLOPs", "Paper PSNR Set5", "Paper PSNR Set14"]
    assert rows[2:] == [  # the store holds the paper's numbers as ours: each row meets itself
        ["Softmax", *(["[0,0,1,0,1]", "0.47", "154.80", "30.34", "27.28"] * 2)],
        ["Sparsestmax", *(["[0,0,0,1,0,1]", "0.34", "117.39", "30.34", "27.29"] * 2)],
    ]
    assert "Paper columns: Table 7 of the supplementary" in result.stdout
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

    sweep_report.print_report("running", str(tmp_path / "storage"), store["uri"])  # what `trilevel demo` calls
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
    assert _cells(result.stdout)[0] == ["Sweep", "Id", "Storage", "Status", "Started", "Trials"]
    assert sweeps["table8"][1:4] == [MISSING, MISSING, "FINISHED"] and sweeps["table8"][5] == "3/3"  # no id: older
    assert sweeps["running"][3] == "RUNNING" and sweeps["running"][5] == "1/2"
    assert sweeps["table7"][3:] == [MISSING, MISSING, "2/2"]  # trials tracked without a parent run
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", sweeps["table8"][4])

    result = CliRunner().invoke(cli_report.status, ["running", "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Sweep running: 1/2 trials finished")
    table_rows = _cells(result.stdout.split("\n\n", 1)[1])
    header = ["Trial", "Status", "Stage", "Path", "Stages", "Params (M)", "GFLOPs", "PSNR Set5", "PSNR Set14", "Run"]
    assert table_rows[0] == header
    assert table_rows[2][:4] == ["lambda_order=0.0", "FINISHED", "evaluate (FINISHED)", "[0,0,1,0,0,0,1]"]
    assert table_rows[2][4] == "pretrain=computed search=computed train=computed"
    assert table_rows[2][5:9] == ["0.58", "184.08", "30.32", "27.21"]
    assert table_rows[3][:4] == ["lambda_order=0.1", "RUNNING", "search (RUNNING)", MISSING]
    assert table_rows[3][4] == "pretrain=reused search=computed"  # per stage: from the stage store or not
    assert table_rows[3][5:9] == [MISSING] * 4
    finished, running = (collect(store["uri"], EXPERIMENT, "running")[i].run_id for i in (0, 1))
    assert (table_rows[2][9], table_rows[3][9]) == (finished, running)
    assert "Best trial: lambda_order=0.0 (test PSNR Set5 30.32 dB, 184.08 GFLOPs)" in result.stdout
    assert f"  trilevel upscale --model {finished} --tracking-uri {store['uri']} photos/ --out sr/" in result.stdout


# --- baselines, the paper, the best trial ------------------------------------------------------
def test_every_network_is_read_against_bicubic_and_the_teacher(store):
    rows = collect(store["uri"], EXPERIMENT, "demo")
    assert rows[0].psnr_bicubic == {"demo": DEMO_BICUBIC} and rows[0].psnr_teacher == {"demo": DEMO_TEACHER}
    assert baselines(rows) == Baselines({"demo": DEMO_BICUBIC}, {"demo": DEMO_TEACHER})
    rendered = table(rows)
    assert list(rendered[0]) == ["λ", "Path", "Params (M)", "GFLOPs", "PSNR demo", "Δ vs bicubic demo"]
    assert [list(r.values()) for r in rendered] == [
        ["Bicubic", MISSING, MISSING, MISSING, "28.17", MISSING],
        ["Teacher", MISSING, MISSING, MISSING, "29.50", "+1.33"],
        ["0", "[0,1]", "0.02", "1.50", "27.00", "-1.17"],
        ["0.1", "[0,1]", "0.02", "1.20", "28.90", "+0.73"],
    ]
    assert below_bicubic(rows) == ["λ=0 on demo: 27.00 dB vs bicubic 28.17 dB (-1.17 dB)"]
    assert paper_table("demo", (r.axes for r in rows), scored_test_sets(rows)) is None  # demo photos: not the paper's


def test_the_plot_draws_the_baselines(store):
    fig = pareto_figure(collect(store["uri"], EXPERIMENT, "demo"))
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"Pareto front", "bicubic 28.17 dB", "teacher 29.50 dB"}
    assert list(lines["bicubic 28.17 dB"].get_ydata()) == [DEMO_BICUBIC, DEMO_BICUBIC]  # a horizontal line
    low, high = ax.get_ylim()
    assert low < 27.00 and high > DEMO_TEACHER  # every point and line in view


def test_a_report_says_loudly_when_a_network_does_not_beat_bicubic(store, tmp_path):
    files = build_report(store["uri"], EXPERIMENT, "demo", {}, tmp_path)
    text = files.markdown.read_text()
    assert "**⚠ 1 result(s) do not beat bicubic upscaling**" in text
    assert "> - λ=0 on demo: 27.00 dB vs bicubic 28.17 dB (-1.17 dB)" in text
    assert text.index("⚠") < text.index("| Bicubic")  # above the table, not under it
    assert files.paper is None and "Paper" not in files.csv.read_text()
    result = CliRunner().invoke(cli_report.report, ["demo", "--tracking-uri", store["uri"], "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "WARNING: 1 result(s) do not beat bicubic upscaling" in result.stderr
    assert "- λ=0 on demo: 27.00 dB vs bicubic 28.17 dB (-1.17 dB)" in result.stderr


def test_the_paper_table_is_chosen_by_what_the_sweep_varies():
    paper_sets = ["Set5", "Set14"]
    assert paper_table("x", [{LAMBDA: "0.0"}, {LAMBDA: "0.1"}], paper_sets).name == "Table 8"
    assert paper_table("x", [{COMBINER: "softmax"}], ["Set14"]).name == "Table 7"
    assert paper_table("x", [{"search_space.levels": "bilevel"}], paper_sets).name == "Table 9"
    assert paper_table("psnr-b", [{}], paper_sets).name == "Table 5"
    assert paper_table("aim", [{}], ["DIV2K-val"]).name == "Table 6"
    assert paper_table("aim", [{}], paper_sets) is None  # Table 6 was scored on DIV2K-val only
    assert paper_table("mine", [{}], paper_sets) is None
    assert paper_table("x", [{LAMBDA: "0.1", COMBINER: "softmax"}], paper_sets) is None  # two axes: no such table
    table8 = PAPER_TABLES["table8"]
    assert paper_row(table8, {LAMBDA: "0.0"}).path == "[0,0,1,0,0,0,1]"  # "0.0" is the paper's λ = 0
    assert paper_row(table8, {LAMBDA: "0.5"}) is None


def test_table5_puts_the_published_teacher_beside_ours():
    rows = [
        _row(
            "default",
            {},
            [0, 0, 0, 0, 0, 1],
            0.51,
            33.36,
            {"Set5": 31.5, "Set14": 28.1},
            psnr_bicubic={"Set5": 28.42, "Set14": 26.0},
            psnr_teacher={"Set5": 32.73, "Set14": 28.99},
        )
    ]
    rendered = table(rows, paper=paper_table("psnr-b", [{}], ["Set5", "Set14"]))
    teacher, ours = rendered[1], rendered[2]
    assert (teacher["Method"], teacher["PSNR Set5"], teacher["Paper PSNR Set5"]) == ("Teacher", "32.73", "32.70")
    assert (teacher["Paper Params (M)"], teacher["Paper GFLOPs"]) == ("16.70", "1176.60")
    assert (ours["PSNR Set14"], ours["Δ vs bicubic Set14"], ours["Paper PSNR Set14"]) == ("28.10", "+2.10", "28.26")
    assert rendered[0]["Paper PSNR Set5"] == MISSING  # the paper publishes no bicubic row


def test_best_trial_is_the_highest_psnr_ties_to_fewer_gflops(store):
    rows = collect(store["uri"], EXPERIMENT, "table8")  # Set5: 30.32, 30.34 (169.69 G), 30.34 (117.39 G)
    assert best_row(rows).trial == "lambda_order=0.1"
    assert best_row(collect(store["uri"], EXPERIMENT, "demo")).trial == "lambda_order=0.1"
    running = collect(store["uri"], EXPERIMENT, "running")
    assert best_row(running).trial == "lambda_order=0.0" and best_row(running[1:]) is None  # unfinished: never


def test_the_best_trial_is_chosen_on_validation_never_on_the_test_set():
    higher_test = _row("a", {}, [0], 0.1, 1.0, {"demo": 29.0}, val_selected=27.0)
    higher_val = _row("b", {}, [0], 0.1, 1.0, {"demo": 28.0}, val_selected=27.5)
    assert best_row([higher_test, higher_val]).trial == "b"
    older = _row("c", {}, [0], 0.1, 1.0, {"demo": 29.5})  # tracked before val_psnr_selected: test decides
    assert best_row([higher_test, higher_val, older]).trial == "c"
    # the registry's champion is ranked the same way
    score = Score.of_metrics({"psnr/demo": 29.0, "val_psnr_selected": 27.5, "gflops": 1.0}, "b", "sw")
    assert (score.key, score.psnr, score.gflops) == ("val_psnr_selected", 27.5, 1.0)
    assert Score.of_metrics({"psnr/demo": 29.0}).key == "psnr/demo"


def test_best_of_a_sweep_over_the_test_set_reads_each_trials_own_sets_or_says_why_none_compares(store):
    """A sweep over data.test: trials scored on different sets. best: picked b (chosen on validation) and then
    looked its PSNR up on a's set (KeyError); without validation PSNRs no trial can be compared, and that is said."""
    from orchestrator.upscale.errors import UpscaleError
    from orchestrator.upscale.model_source import open_model

    client = store["client"]
    experiment_id = client.create_experiment("by-test-set", artifact_location=str(store["root"] / "by-test-set"))
    scores = {"a": ("Set5", 29.0, 27.0), "b": ("Set14", 28.0, 27.5)}  # trial → (its test set, PSNR, val PSNR)
    for sweep, validated in (("on-val", True), ("old", False)):
        for value, (test_set, psnr, val) in scores.items():
            extra = {f"psnr/{test_set}": psnr, f"psnr_bicubic/{test_set}": psnr - 1} | (
                {"val_psnr_selected": val} if validated else {}
            )
            _trial(client, experiment_id, None, sweep, "data.test", value, TABLE8["0.0"], extra=extra)
    where = {"tracking_uri": store["uri"], "mlflow_experiment": "by-test-set"}
    with pytest.raises(UpscaleError, match="has no logged model") as picked:  # the trials log no model here
        open_model("best:on-val", **where)
    assert "best trial of on-val: test=b, run" in str(picked.value) and "PSNR Set14 28.00 dB" in str(picked.value)
    with pytest.raises(UpscaleError, match="model source best:old: sweep 'old': its 2 finished trials cannot be"):
        open_model("best:old", **where)
    status = CliRunner().invoke(
        cli_report.status, ["old", "--tracking-uri", store["uri"], "--mlflow-experiment", "by-test-set"]
    )
    assert status.exit_code == 0, status.output
    assert "No best trial: sweep 'old': " in status.stdout and "1 scored on Set5; 1 scored on Set14" in status.stdout


def test_status_shows_psnr_beside_bicubic_and_the_best_trials_command(store):
    result = CliRunner().invoke(cli_report.status, ["demo", "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    rows = _cells(result.stdout.split("\n\n")[1])
    assert rows[0][7:] == ["PSNR demo", "Δ vs bicubic demo", "Run"]
    best = collect(store["uri"], EXPERIMENT, "demo")[1]
    assert rows[3][7:] == ["28.90", "+0.73", best.run_id]
    assert "Bicubic: PSNR demo 28.17 dB" in result.stdout
    best_line = "Best trial: lambda_order=0.1 (test PSNR demo 28.90 dB, bicubic 28.17 dB (+0.73), 1.20 GFLOPs)"
    assert best_line in result.stdout
    assert f"trilevel upscale --model {best.run_id} --tracking-uri {store['uri']} photos/ --out sr/" in result.stdout
    experiment_id = store["client"].get_experiment_by_name(EXPERIMENT).experiment_id
    assert (
        f"MLflow UI: http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"  (start it with: mlflow ui --backend-store-uri {store['uri']})"
    ) in result.stdout


def test_ui_links_open_the_model_training_view():
    """MLflow 3.17's UI starts on GenAI whatever the experiment kind; the link's workflowType chooses."""
    assert ui_url("http://mlflow:5000/", "7", "abc") == (
        "http://mlflow:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    )
    assert ui_hint("https://mlflow.example.org", "7") == (
        "MLflow UI: https://mlflow.example.org/#/experiments/7/runs?workflowType=machine_learning"
    )


def test_sweeps_of_one_name_on_different_storage_are_never_mixed(store, tmp_path):
    """Issue 19, item 1: the id kept with each sweep on its storage picks its runs; without one, refused."""
    from orchestrator.cli.sweep_report import sweep_id_of
    from orchestrator.sweep_lease import sweep_id

    client = store["client"]
    experiment_id = client.create_experiment("twins", artifact_location=str(store["root"] / "twins"))
    ids = {}
    for storage, value in (("alice", "0.0"), ("bob", "0.1")):
        ids[storage] = sweep_id(str(tmp_path / storage), "twin")
        parent = None
        if storage == "alice":  # bob's trial has no parent run: its storage is not known
            parent = _parent(client, experiment_id, "twin", LAMBDA, [0.0])
            client.log_param(parent, "storage", str(tmp_path / storage))
            client.set_tag(parent, "trilevel.sweep_id", ids[storage])
        trial = _trial(client, experiment_id, parent, "twin", LAMBDA, value, TABLE8[value])
        client.set_tag(trial, "trilevel.sweep_id", ids[storage])
    with pytest.raises(ValueError, match=f"2 different sweeps named 'twin'.*{ids['alice']}") as err:
        collect(store["uri"], "twins", "twin")
    assert ids["bob"] in str(err.value) and "--storage" in str(err.value)
    alice = sweep_id_of(str(tmp_path / "alice"), "twin")
    assert alice == ids["alice"] and sweep_id_of(str(tmp_path / "carol"), "twin") is None
    assert [row.trial for row in collect(store["uri"], "twins", "twin", alice)] == ["lambda_order=0.0"]
    where = ["twin", "--tracking-uri", store["uri"], "--mlflow-experiment", "twins"]
    listed = CliRunner().invoke(cli_report.status, where[1:])  # every sweep: the two are two rows, never merged
    assert listed.exit_code == 0, listed.output
    rows = [row for row in _cells(listed.stdout)[2:] if row[0] == "twin"]
    assert [row[5] for row in rows] == ["1/1", "1/1"]  # not one row of 2 trials
    assert [row[1:3] for row in rows] == [[ids["alice"][:8], str(tmp_path / "alice")], [ids["bob"][:8], MISSING]]
    refused = CliRunner().invoke(cli_report.status, where)
    assert refused.exit_code == 1 and "`trilevel report/status --storage`" in refused.output  # as the error advises:
    shown = CliRunner().invoke(cli_report.status, [*where, "--storage", str(tmp_path / "alice")])
    assert shown.exit_code == 0, shown.output
    assert "1/1 trials finished" in shown.stdout and "lambda_order=0.0" in shown.stdout
    assert "lambda_order=0.1" not in shown.stdout  # bob's trial, on other storage


def test_a_sweep_over_seeds_is_reported_by_arm_with_its_directions(store, tmp_path):
    """Two λ arms at seeds 0-2 (tracked as a `--seeds 3` sweep tags them): n, ± and the paired verdict are shown.

    Last in this module: it adds a sweep to the shared store.
    """
    client = store["client"]
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parent = _parent(client, experiment_id, "seeded", LAMBDA, [0.0, 0.1])
    params = {"0.0": (0.40, 0.40, 0.41), "0.1": (0.30, 0.31, 0.29)}  # λ=0.1 smaller on every seed
    for value, per_seed in params.items():
        for seed, params_m in enumerate(per_seed):
            trial = f"lambda_order={value},seed={seed}"
            tags = {"trilevel.kind": "trial", "trilevel.sweep": "seeded", "trilevel.trial": trial}
            tags |= {f"trilevel.axis.{LAMBDA}": value, "trilevel.axis.seed": str(seed), "mlflow.parentRunId": parent}
            run_id = _run(client, experiment_id, trial, tags)
            client.set_tag(run_id, "trilevel.path", "[0, 1]")
            values = {"params_m": params_m, "gflops": 1.0, "psnr/demo": 28.5, "psnr_bicubic/demo": 28.0}
            client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in values.items()])
            client.set_terminated(run_id, "FINISHED")
    result = CliRunner().invoke(cli_report.report, ["seeded", "--tracking-uri", store["uri"], "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = re.sub(r" +", " ", result.stdout)
    assert "## Arms over seeds" in text and "| λ=0.1 | 3 | [0,1] ×3 | 0.30 ± 0.01 |" in text, text
    assert "λ=0.1 < λ=0 in params (M) | 3 |" in text and "| 3/3 |" in text and "| holds |" in text
    assert "## Directions the paper claims" in (tmp_path / "report.md").read_text()
