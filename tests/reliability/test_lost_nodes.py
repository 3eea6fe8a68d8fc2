"""A Train worker of a 2-worker stage SIGKILLed, then the node running the trial lost whole: retried, bit-identical.

No mocks: a real multi-node Ray cluster on this machine, a `ray start --head` that runs no trial (0 CPUs) and
two `ray start --address` worker nodes of one logical CPU each (either must hold the trial once the other is
lost: it reserves half a CPU for its in-process stages, its 2-worker search run asks one more), every node its
own process group with its own marker (tests/servers.py), so a whole node can be killed at once, as a lost
machine is. One `trilevel sweep --address` runs one trial: pretrain and train in the trial's process (one
worker), the search as a 2-worker TorchTrainer run. Two faults, one after the other, each while the run stands
at a barrier before a stage's second checkpoint, the first one registered (workers.gates):

1. during the search, one of its two Train workers is SIGKILLed: Ray Train restarts the worker group, which
   resumes the search from search-e0001 (`resources.max_failures`);
2. during the train stage, the whole node the trial's process runs on is SIGKILLed (raylet, workers,
   everything): Tune retries the trial on the node that is left, which skips the finished stages by their
   done markers and resumes the train stage from train-e0001.

With `resources.max_failures=1` the trial has one retry: had Train not restarted its workers, the failed search
would have used it (the trial would retry and Train resume from storage), and the node loss would then end the
trial ERROR. The head's GCS declares a node dead after 3 failed health checks 0.5 s apart instead of Ray's
default 5 checks 3 s apart (~15 s): detection is Ray's, the test only waits less for it. The nodes turn off Ray
Train's preemption watcher and metrics, as the tests' local Ray does (orchestrator.cluster.LOCAL_RAY_ENV): the
watcher acts on a node's drain notice, which a killed node never sends.

The trial's searched architecture, search state and trained network must equal bit for bit those of the same
plan run uninterrupted without Ray, computed while the sweep runs: pretrain and train in this process
(`workers.stages.run_stages`, as the faulted-sweep test's reference), the search on two local gloo processes,
one rank each (tests/ranks.py). Not a twin trial in the sweep: the stage store would hand the twin the faulted
trial's stages (same key), and the two would be compared with themselves. A checkpoint written before a fault
must not be written again (its files are older than the fault): the stage resumed from it, not from scratch.

Cost: ~65 s and ~95 CPU-seconds (every process of the test, its Ray nodes included) on the 2-core machine at
load ~5; the test it replaced (four trials: two faulted, two twins) took ~110 s and ~125 CPU-seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from orchestrator.cluster import LOCAL_RAY_ENV
from orchestrator.experiment import load_experiment, trials
from orchestrator.plan import TrialPlan, plan_trial, resolve_data
from orchestrator.train_run import local_io
from tests.gates import Gate
from tests.helpers import TINY, wait_for
from tests.ranks import run_ranks
from tests.servers import MARKER_VAR, marked_processes, ray_head, ray_node
from workers.checkpointing import load_state
from workers.stage_io import checkpoint_names
from workers.stages import run_stages

pytestmark = pytest.mark.xdist_group("multinode")  # both tests check the one scenario of the module's fixture

ROOT = Path(__file__).resolve().parents[2]
SWEEP = "lost"
OVERRIDES = (
    *TINY,
    "sweep={stages.search.lambda_order: [0.1]}",
    "resources.workers.search=2",
    "resources.max_failures=1",
    "stages.pretrain.epochs=1",
    "stages.pretrain.steps_per_epoch=2",
    "stages.search.epochs=2",
    "stages.search.steps_per_epoch=2",
    "stages.train.epochs=2",
    "stages.train.steps_per_epoch=2",
)
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
TIMEOUT_S = 600


def _plan(storage: Path, sweep: str = SWEEP) -> TrialPlan:
    experiment = load_experiment("table8", "tiny", OVERRIDES, name=SWEEP, storage=str(storage))
    (trial,) = trials(experiment)
    return plan_trial(trial, resolve_data(experiment, str(storage)), str(storage), sweep)


def _run_dir(plan: TrialPlan, stage: str) -> str:
    return next(run.settings.checkpoints for run in plan.runs if stage in run.stages)


def _node_of(pid: int, nodes: list[dict]) -> dict:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(node for node in nodes if f"{MARKER_VAR}={node['marker']}".encode() in environ)


def _stands_at(gate: Gate, driver: subprocess.Popen, log: Path) -> int:
    """The pid standing at `gate`; fails at once, with the driver's output, if the sweep ended first."""
    deadline = time.monotonic() + TIMEOUT_S
    while not gate.reached():
        assert driver.poll() is None, f"the sweep ended ({driver.returncode}) before {gate.point}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"nothing reached {gate.point} within {TIMEOUT_S} s"
        time.sleep(0.05)
    return gate.wait(0)


def _registered(run: str, checkpoint: str) -> bool:
    try:
        return checkpoint in checkpoint_names(run)
    except ValueError:  # Ray Train rewrites its list in place: read while it was written
        return False


def _written(run: str, checkpoint: str) -> float:
    """When the checkpoint's state was written (a checkpoint written again gets new files)."""
    return (Path(run) / checkpoint / "state.pt").stat().st_mtime


def _uninterrupted(storage: Path, rendezvous: Path) -> TrialPlan:
    """The same trial's plan run without Ray and without faults (its own sweep folder, no stage store)."""
    plan = _plan(storage, sweep="reference")
    for run in plan.runs:
        settings = dataclasses.replace(run.settings, store=None)  # computes every stage, publishes nothing
        if run.workers == 1:
            run_stages(settings, local_io(dataclasses.replace(run, settings=settings), settings.stages[0].scale))
        else:
            run_ranks(settings, run.workers, str(rendezvous))
    return plan


@pytest.fixture(scope="module")
def lost(tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("lost")
    storage, log = root / "runs", root / "driver.log"
    plan = _plan(storage)  # also writes the demo data set the sweep then finds on its storage
    pool = ThreadPoolExecutor(1)
    reference = pool.submit(_uninterrupted, storage, root / "rendezvous")  # computed while the sweep runs
    search, train = _run_dir(plan, "search"), _run_dir(plan, "train")
    worker_gate = Gate(search, "search-e0002").arm()
    node_gate = Gate(train, "train-e0002").arm()
    command = [sys.executable, "-m", "orchestrator", "sweep", "table8", "--name", SWEEP, "--storage", str(storage)]
    command += ["--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", *(i for o in OVERRIDES for i in ("--set", o))]
    events: dict[str, object] = {}
    with (
        ray_head(dashboard=False, num_cpus=0, env=FAST_NODE_DEATH) as head,
        ray_node(head["gcs"], 1, LOCAL_RAY_ENV) as a,
        ray_node(head["gcs"], 1, LOCAL_RAY_ENV) as b,  # one after the other: two at once took 35 s here, in turn 11 s
    ):
        nodes = [a, b]
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        with open(log, "w") as out:
            driver = subprocess.Popen([*command, "--address", head["gcs"], "-v"], env=env, stdout=out, stderr=out)
        try:
            worker = _stands_at(worker_gate, driver, log)  # one of the two search workers, before search-e0002
            wait_for(lambda: _registered(search, "search-e0001"), 60, "search-e0001 registered")
            events["worker_title"] = Path(f"/proc/{worker}/cmdline").read_text().split("\0")[0]
            events["worker_killed"] = time.time()
            os.kill(worker, signal.SIGKILL)
            worker_gate.open()  # the restarted workers pass

            trial = _stands_at(node_gate, driver, log)  # the trial's process, before train-e0002
            killed = _node_of(trial, nodes)
            events["node_killed"] = time.time()
            killed["kill"]()  # the node the trial's process runs on, all of it
            events["node_left"] = marked_processes(killed["marker"])
            node_gate.open()  # the retried trial passes
            driver.wait(TIMEOUT_S)
        finally:
            for gate in (worker_gate, node_gate):
                gate.open()
            with contextlib.suppress(ProcessLookupError):
                driver.kill()
            driver.wait()
    pool.shutdown()
    yield {"plan": plan, "reference": reference, "rc": driver.returncode, "out": log.read_text(), **events}
    for gate in (worker_gate, node_gate):
        gate.__exit__()


def _done(plan: TrialPlan, stage: str) -> dict:
    return json.loads((Path(plan.outputs) / stage / "_STAGE_DONE.json").read_text())


def test_the_trial_was_retried_on_the_node_left_and_both_stages_resumed(lost):
    assert lost["rc"] == 0, lost["out"][-6000:]
    assert f"{lost['plan'].trial_id} TERMINATED" in lost["out"], lost["out"][-3000:]
    assert lost["node_left"] == []  # the node was lost whole: the retry ran on the node that is left
    assert lost["worker_title"].startswith("ray::RayTrainWorker"), lost["worker_title"]  # a Train worker, not the trial
    for stage, fault in (("search", "worker_killed"), ("train", "node_killed")):
        run = _run_dir(lost["plan"], stage)
        names = checkpoint_names(run)
        assert names.count(f"{stage}-e0001") == 1 and f"{stage}-e0002" in names, names
        # resumed from the checkpoint written before the fault, not redone: its files are older than the fault
        assert _written(run, f"{stage}-e0001") < lost[fault] < _written(run, f"{stage}-e0002")


def test_the_faulted_trial_ends_bit_identical_to_an_uninterrupted_run(lost):
    reference = lost["reference"].result()  # its failure fails this test alone
    assert _done(lost["plan"], "search")["genotype"] == _done(reference, "search")["genotype"]
    for stage in ("search", "train"):
        got = load_state(_done(lost["plan"], stage)["checkpoint"])["model"]
        expected = load_state(_done(reference, stage)["checkpoint"])["model"]
        assert got.keys() == expected.keys()
        for key in got:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=f"{stage}: {key}")
