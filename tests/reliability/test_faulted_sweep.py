"""One tiny sweep on a real cluster, submitted as a Ray Job, through every fault a sweep must survive.

No mocks: the session's `ray start --head` and `mlflow server` (tests/conftest.py), `trilevel submit`
with this checkout as the job's code. Two trials run one after the other. Each fault happens while the run
stands at a barrier just before a named checkpoint (workers.gates, tests/gates.py), so it lands at the
moment it names by construction, not when a poll happens to see it:

1. the MLflow server is SIGKILLed while trial A stands before its last search checkpoint (A pretrained with
   two Train workers, in a Train run of its own), and restarted on the same port and store while A stands
   before its last train checkpoint: the outage spans A's search → train boundary and A's first train epoch;
2. trial B's worker, which is B's trial process (a one-worker run runs there), is SIGKILLed while it stands
   before its second search checkpoint, the first one registered (Tune retries the trial, which skips
   pretrain by its done marker and resumes the search from that checkpoint);
3. the sweep's driver (the job's entrypoint) is SIGKILLed while B stands before its first train checkpoint,
   its search finished;
4. the same sweep is submitted again: the same experiment under the same name resumes.

The tests below check what each fault must leave: the sweep finishes, one MLflow run per
sweep/trial/stage and none RUNNING, every epoch's metrics (the outage's delivered late), the finished
trial not run again, the killed worker's search identical to an uninterrupted one, and the job commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from orchestrator.jobs import job_logs, job_status, list_jobs
from orchestrator.tracking import code_provenance
from orchestrator.train_run import local_io
from tests.gates import Gate
from tests.helpers import TINY, tiny_plan, wait_for
from tests.servers import marked_processes
from workers.checkpointing import load_state
from workers.shards.demo import DEMO_TEST
from workers.stage_io import checkpoint_names
from workers.stages import run_stages

pytestmark = pytest.mark.xdist_group("cluster")  # shares the session cluster (tests/conftest.py)

SWEEP = "faulted"
# Trial A pretrains with 2 Train workers (so it takes two runs: pretrain as a TorchTrainer, then search and
# train with one worker, in the trial's process); trial B runs all three stages in one run in its process.
TRIALS = ("pretrain=2", "pretrain=1")
RUNS = {
    "pretrain=2": ("run-pretrain", "run-search-train", "run-search-train"),  # the run of each stage
    "pretrain=1": ("run-pretrain-search-train",) * 3,
}
SEARCH_EPOCHS, TRAIN_EPOCHS = 2, 2
OVERRIDES = (
    *TINY,
    "sweep={resources.workers.pretrain: [2, 1]}",
    "stages.search.lambda_order=0.1",
    "resources.max_concurrent_trials=null",  # as many at once as fit: what ran when Tune ignored its =1
    "stages.pretrain.epochs=1",
    "stages.pretrain.steps_per_epoch=2",
    f"stages.search.epochs={SEARCH_EPOCHS}",
    "stages.search.steps_per_epoch=2",
    f"stages.train.epochs={TRAIN_EPOCHS}",
    "stages.train.steps_per_epoch=2",
    "tracking.flush_timeout_s=120",
)
STAGES = {"pretrain", "search", "train", "evaluate"}


def _pids(marker: str, *needles: str) -> list[int]:
    """Processes of the session's cluster (they carry its marker) whose command line holds every needle."""
    found = []
    for pid in marked_processes(marker):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if all(needle in cmdline for needle in needles):
                found.append(pid)
    return found


class Faults(threading.Thread):
    """Injects the outage, the worker kill and the driver kill, each while the run waits at its gate."""

    def __init__(self, cluster: dict, storage: Path) -> None:
        super().__init__(daemon=True)
        self.cluster, self.storage = cluster, storage
        self.client = MlflowClient(tracking_uri=cluster["mlflow"])
        self.events: dict[str, object] = {}
        self.error: BaseException | None = None
        a, b = TRIALS
        self.gates = {
            "outage": self._gate(a, f"search-e{SEARCH_EPOCHS:04d}"),  # A's search ends in the outage
            "restart": self._gate(a, f"train-e{TRAIN_EPOCHS:04d}"),  # ... and its first train epoch too
            "worker": self._gate(b, "search-e0002"),  # B's first search checkpoint written
            "driver": self._gate(b, "train-e0001"),  # B's search finished
        }

    def _run_dir(self, trial: str, stage: str) -> Path:
        return self.storage / SWEEP / "stages" / trial / RUNS[trial][("pretrain", "search", "train").index(stage)]

    def _gate(self, trial: str, checkpoint: str) -> Gate:
        return Gate(self._run_dir(trial, checkpoint.split("-", 1)[0]), checkpoint)

    def _kill(self, *needles: str) -> int:
        pids = _pids(self.cluster["marker"], *needles)
        assert pids, f"no process with {needles} to kill"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids[0]

    def run(self) -> None:
        a, b = TRIALS
        server, gates = self.cluster["mlflow_server"], self.gates
        try:
            search_done = self.storage / SWEEP / "stages" / a / "search" / "_STAGE_DONE.json"
            gates["outage"].wait()
            self.events["search_done_at_outage"] = search_done.is_file()
            server.kill()
            self.events["mlflow_killed"] = time.time()
            gates["outage"].open()

            gates["restart"].wait()
            self.events["search_done_in_outage"] = search_done.is_file()
            server.start()
            self.events["mlflow_restarted"] = time.time()
            gates["restart"].open()

            worker = gates["worker"].wait()
            self.events["registered_at_worker_kill"] = checkpoint_names(str(self._run_dir(b, "search")))
            os.kill(worker, signal.SIGKILL)  # the very process standing at the gate: B's trial
            self.events["worker_killed"] = worker
            gates["worker"].open()  # the retried trial passes

            trial_b = gates["driver"].wait()
            self.events["trial_a_end_ms"] = self._trial_end(a)
            self.events["driver_killed"] = self._kill("-m orchestrator sweep", f"--name {SWEEP}")
            # Ray ends a dead driver's trials: B's, still at its gate, must not write past it
            wait_for(lambda: not Path(f"/proc/{trial_b}").exists(), 120, "B's trial to end with its driver")
            gates["driver"].open()
        except BaseException as err:  # surfaced by the test
            self.error = err
        finally:
            for gate in gates.values():
                gate.open()

    def _trial_end(self, trial: str) -> int | None:
        experiment = self.client.get_experiment_by_name("trilevel")
        query = f"tags.`trilevel.kind` = 'trial' and tags.`trilevel.trial` = '{trial}'"
        (run,) = self.client.search_runs([experiment.experiment_id], query)
        return run.info.end_time


def _wait_job(address: str, submission_id: str, timeout_s: float = 900) -> str:
    deadline = time.monotonic() + timeout_s
    status = job_status(address, submission_id)
    while status not in {"SUCCEEDED", "FAILED", "STOPPED"} and time.monotonic() < deadline:
        time.sleep(2)
        status = job_status(address, submission_id)
    return status


def _submit(cluster: dict, storage: Path, *extra: str):
    """`trilevel submit` as a user types it (click's runner: the command's own code, in this process)."""
    from orchestrator.cli.submit import submit

    args = ["table8", "--address", cluster["dashboard"], "--scale", "tiny", "--name", SWEEP, "--storage", str(storage)]
    args += ["--tracking-uri", cluster["mlflow"], *(item for o in OVERRIDES for item in ("--set", o)), *extra]
    return CliRunner().invoke(submit, args)


@pytest.fixture(scope="module")
def faulted(cluster, tmp_path_factory) -> dict:
    """Run the scenario once; every test of this module checks part of what it left."""
    storage = tmp_path_factory.mktemp("faulted") / "runs"
    faults = Faults(cluster, storage)
    for gate in faults.gates.values():
        gate.arm()
    faults.start()
    submitted = _submit(cluster, storage, "--no-wait")
    assert submitted.exit_code == 0, submitted.output
    first = submitted.stdout.split()[0]  # the submission id, alone on stdout
    assert f"Follow:  trilevel logs {first} --address {cluster['dashboard']} --follow" in submitted.stderr
    first_status = _wait_job(cluster["dashboard"], first)
    faults.join(timeout=30)
    assert faults.error is None, repr(faults.error) + "".join(job_logs(cluster["dashboard"], first))[-4000:]
    followed = _submit(cluster, storage)  # the same experiment under the same name resumes; followed to its end
    second = followed.stdout.split()[0]
    logs = "".join(job_logs(cluster["dashboard"], second))
    assert followed.exit_code == 0, f"the re-submitted job: {followed.output[-6000:]}"
    assert f"Job {second} SUCCEEDED." in followed.stderr
    return {
        "storage": storage,
        "first": first,
        "first_status": first_status,
        "second": second,
        "second_logs": logs,
        "second_followed": followed.stdout,
        "events": faults.events,
        "client": MlflowClient(tracking_uri=cluster["mlflow"]),
        "cluster": cluster,
    }


def _runs(client: MlflowClient, kind: str) -> list:
    experiment = client.get_experiment_by_name("trilevel")
    query = f"tags.`trilevel.kind` = '{kind}' and tags.`trilevel.sweep` = '{SWEEP}'"
    return client.search_runs([experiment.experiment_id], query, max_results=100)


def test_the_sweep_survives_every_fault_and_resumes_when_submitted_again(faulted):
    assert faulted["first_status"] == "FAILED"  # its driver was killed
    events = faulted["events"]
    assert {"mlflow_killed", "mlflow_restarted", "worker_killed", "driver_killed"} <= set(events), events
    # the outage spanned the search→train boundary: down before A's search finished, up again after
    assert not events["search_done_at_outage"] and events["search_done_in_outage"]
    assert events["registered_at_worker_kill"][-1] == "search-e0001"  # B's worker died with a search checkpoint
    assert f"Sweep {SWEEP}: {TRIALS[0]} TERMINATED, {TRIALS[1]} TERMINATED" in faulted["second_logs"]
    assert "sweep 'faulted' exists" not in faulted["second_logs"]


def test_one_run_per_sweep_trial_and_stage_all_finished_with_every_epoch(faulted):
    client = faulted["client"]
    (sweep,), trials, stages = _runs(client, "sweep"), _runs(client, "trial"), _runs(client, "stage")
    assert sorted(r.data.tags["trilevel.trial"] for r in trials) == sorted(TRIALS)
    assert all(r.info.status == "FINISHED" for r in [sweep, *trials, *stages])
    # the upload has no .git: the submitting checkout's commit reached every run through the job's env
    submitted = code_provenance(Path(__file__).resolve().parents[2])["TRILEVEL_GIT_COMMIT"]
    assert {r.data.tags.get("trilevel.git_commit") for r in [sweep, *trials, *stages]} == {submitted}
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == sweep.info.run_id
        assert trial.data.metrics["psnr/demo"] > 0 and "psnr_bicubic/demo" in trial.data.metrics
        children = [s for s in stages if s.data.tags["mlflow.parentRunId"] == trial.info.run_id]
        mine = {s.data.tags["trilevel.stage"]: s for s in children}
        assert set(mine) == STAGES and len(children) == 4
        for stage, epochs in (("search", SEARCH_EPOCHS), ("train", TRAIN_EPOCHS)):
            history = client.get_metric_history(mine[stage].info.run_id, "epoch")
            assert sorted({m.step for m in history}) == list(range(epochs)), (trial.data.tags["trilevel.trial"], stage)
        assert {a.path for a in client.list_artifacts(mine["search"].info.run_id)} >= {"genotype.json", "genotype.md"}
        saved = {a.path for a in client.list_artifacts(mine["train"].info.run_id, "checkpoint")}
        assert saved == {"checkpoint/state.pt", "checkpoint/genotype.json", "checkpoint/_CHECKSUMS.json"}
    by_trial = {t.data.tags["trilevel.trial"]: t for t in trials}
    # trial A finished before the driver was killed, and was not run again after the re-submit
    assert by_trial[TRIALS[0]].info.end_time == faulted["events"]["trial_a_end_ms"]
    # trial A's train run was created after the restart, though training ran during the outage
    a_stages = [s for s in stages if s.data.tags["mlflow.parentRunId"] == by_trial[TRIALS[0]].info.run_id]
    a_train = next(s for s in a_stages if s.data.tags["trilevel.stage"] == "train")
    assert a_train.info.start_time >= faulted["events"]["mlflow_restarted"] * 1000 - 1000
    # logged after the kill (A's training ran wholly after it: the kill was made before A's last search checkpoint
    # was reported) and delivered: the run it went to was only created after the restart. Its stamp is not compared
    # with the restart: the relay forwards epochs asynchronously, so it may be stamped just after the restart
    late = min(client.get_metric_history(a_train.info.run_id, "epoch"), key=lambda m: m.step)
    assert faulted["events"]["mlflow_killed"] * 1000 < late.timestamp
    assert not (faulted["storage"] / SWEEP / "tracking-backlog").exists()


def test_tune_saw_every_epoch_of_the_train_run_and_of_the_run_in_the_trial(faulted):
    from orchestrator.api import open_results

    result = open_results(SWEEP, str(faulted["storage"]))  # read back from the storage, as after any sweep
    # trial A pretrained in a TorchTrainer run (its reports reach Tune through the Train callback), then
    # searched and trained in its own process (which reports itself)
    curves = result.curves(TRIALS[0])
    epochs = (
        [("pretrain", 0)] + [("search", e) for e in range(SEARCH_EPOCHS)] + [("train", e) for e in range(TRAIN_EPOCHS)]
    )
    assert list(zip(curves.stage, curves.epoch, strict=True))[:-1] == epochs and curves.stage.iloc[-1] == "evaluate"
    assert list(curves.epochs_done) == [*range(1, len(epochs) + 1), len(epochs)]
    assert curves.val_psnr.notna().all() and curves.checkpoint_path.iloc[0].endswith("pretrain-e0001")
    trials = result.trials.set_index("trial_id")
    assert set(trials.status) == {"TERMINATED"} and trials.run_id.str.len().eq(32).all()


def test_the_killed_worker_resumed_to_the_uninterrupted_search(faulted, tmp_path):
    # an uninterrupted reference of trial B: the same plan in this process (same code and seeds, one thread)
    reference = tiny_plan(str(tmp_path / "reference"), OVERRIDES[len(TINY) :], trial=1)
    (run,) = reference.runs
    _, search, _ = run_stages(run.settings, local_io(run, 4))
    run_dir = faulted["storage"] / SWEEP / "stages" / TRIALS[1] / RUNS[TRIALS[1]][0]
    names = checkpoint_names(str(run_dir))
    assert names[0] == "pretrain-e0001" and names.count("pretrain-e0001") == 1  # pretrain was not redone
    done = json.loads((faulted["storage"] / SWEEP / "stages" / TRIALS[1] / "search" / "_STAGE_DONE.json").read_text())
    for key in ("alpha", "width_logits", "path_logits", "frozen_ops", "frozen_path"):
        got, expected = load_state(done["checkpoint"])["model"][key], load_state(search.checkpoint)["model"][key]
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=key)
    assert done["genotype"] == search.genotype


def test_two_workers_agree_and_each_worker_count_gets_its_own_train_run(faulted):
    stages = faulted["storage"] / SWEEP / "stages" / TRIALS[0]
    assert sorted(p.name for p in stages.glob("run-*")) == sorted(set(RUNS[TRIALS[0]]))
    pretrain = json.loads((stages / "pretrain" / "_STAGE_DONE.json").read_text())
    search = json.loads((stages / "search" / "_STAGE_DONE.json").read_text())
    train = json.loads((stages / "train" / "_STAGE_DONE.json").read_text())
    assert pretrain["metrics"]["weight_rank_spread"] == 0.0 and pretrain["metrics"]["steps"] == 2
    assert Path(pretrain["checkpoint"]).parent.name == "run-pretrain"
    # the search, in the next Train run, started from the 2-worker pretrain's weights (its done marker)
    assert Path(search["checkpoint"]).parent.name == Path(train["checkpoint"]).parent.name == "run-search-train"
    assert train["genotype"] == search["genotype"]


def test_the_job_commands_see_both_jobs(faulted):
    from orchestrator.cli.report import status
    from orchestrator.cli.submit import jobs, logs, stop

    address, second = faulted["cluster"]["dashboard"], faulted["second"]
    assert faulted["second_followed"] == f"{second}\n" + faulted["second_logs"]  # `submit` followed the whole log
    shown_logs = CliRunner().invoke(logs, [second, "--address", address, "--follow"])  # a finished job's stream ends
    assert shown_logs.exit_code == 0 and shown_logs.stdout == faulted["second_logs"], shown_logs.output[-3000:]
    listed = {job.submission_id: job for job in list_jobs(address)}
    assert listed[second].sweep == SWEEP and listed[second].status == "SUCCEEDED"
    assert listed[faulted["first"]].status == "FAILED"
    shown = CliRunner().invoke(status, [second, "--address", address])
    assert shown.exit_code == 0 and "SUCCEEDED" in shown.output and SWEEP in shown.output, shown.output
    listing = CliRunner().invoke(jobs, ["--address", address])
    assert listing.exit_code == 0 and second in listing.output and faulted["first"] in listing.output, listing.output
    stopped = CliRunner().invoke(stop, [second, "--address", address])
    assert stopped.exit_code == 0 and "not running (SUCCEEDED)" in stopped.output, stopped.output


def test_the_report_of_the_sweep_has_a_bicubic_row_and_the_model_to_use(faulted):
    from orchestrator.cli.report import report, status

    uri = faulted["cluster"]["mlflow"]
    shown = CliRunner().invoke(report, [SWEEP, "--storage", str(faulted["storage"]), "--tracking-uri", uri])
    assert shown.exit_code == 0, shown.output
    assert "| Bicubic" in shown.output and "Δ vs bicubic" in shown.output
    assert (faulted["storage"] / SWEEP / "report" / "pareto.png").is_file()
    # selected on the demo's val crops, reported on its test photographs: the report names only the test set
    assert "PSNR demo" in shown.output and "demo-val" not in shown.output, shown.output
    for trial in _runs(faulted["client"], "trial"):
        assert "psnr/demo" in trial.data.metrics and not any("demo-val" in key for key in trial.data.metrics)
        assert "val_psnr_selected" in trial.data.metrics  # what picks best:SWEEP, never the test numbers
    curves = [run for run in _runs(faulted["client"], "stage") if run.data.tags.get("trilevel.stage") == "train"]
    assert curves and all("val_psnr" in run.data.metrics for run in curves)  # val only as per-epoch curves
    for trial_id in TRIALS:
        kept = json.loads((faulted["storage"] / SWEEP / "stages" / trial_id / "per_image.json").read_text())
        assert {row["image_id"] for row in kept["rows"]} == {f"{name}_c256" for name in DEMO_TEST}
    best = CliRunner().invoke(status, [SWEEP, "--tracking-uri", uri])
    assert best.exit_code == 0 and "trilevel upscale --model" in best.output, best.output


def test_the_champion_is_the_best_trials_image_model_and_trial_runs_list_their_datasets(faulted):
    """Issue 20: one registered model per sweep (default name: the sweep's), alias `champion` on the best trial."""
    from orchestrator.report.rows import best_row, collect
    from workers.shards.format import read_manifest

    client = faulted["client"]
    rows = collect(faulted["cluster"]["mlflow"], "trilevel", SWEEP)
    best = best_row(rows)
    assert best is not None
    champion = client.get_model_version_by_alias(SWEEP, "champion")

    def rank(row) -> tuple:  # as best_row ranks: PSNR at 0.01 dB, then GFLOPs (equal ranks: either is the best)
        return (-round(row.val_selected if row.val_selected is not None else row.psnr["demo"], 2), row.gflops)

    (held,) = (row for row in rows if row.run_id == champion.run_id)
    assert champion.tags["trilevel.trial"] == held.trial and rank(held) == rank(best)
    versions = client.search_model_versions(f"name = '{SWEEP}'")
    assert 1 <= len(versions) <= len(TRIALS)  # a version only for a trial that beat the champion of its time
    train_digest = read_manifest(str(faulted["storage"] / "_data" / "demo" / "train")).data["fingerprint"][:32]
    for trial in _runs(client, "trial"):
        inputs = client.get_run(trial.info.run_id).inputs.dataset_inputs
        contexts = {{t.key: t.value for t in d.tags}["mlflow.data.context"]: d.dataset.digest for d in inputs}
        assert contexts.keys() == {"training", "validation", "testing"} and contexts["training"] == train_digest
        models = {
            m.name
            for m in client.search_logged_models([trial.info.experiment_id])
            if m.source_run_id == trial.info.run_id
        }
        assert models == {"model", "image-model"}
