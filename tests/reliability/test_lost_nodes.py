"""A node lost under a trial, and one Train worker of a 2-worker stage SIGKILLed: retried, and bit-identical.

No mocks: a real multi-node Ray cluster on this machine, a `ray start --head` that runs no trial (0 CPUs) and
two `ray start --address` worker nodes of 4 logical CPUs each (one node left must hold a 2-worker trial and its
Train run), every node its own process group with its own marker (tests/servers.py), so a whole node can be
killed at once, as a lost machine is. One `trilevel sweep --address` runs four trials: a grid of the search's
worker count (1: every stage in the trial's process; 2: the search as a 2-worker TorchTrainer run) by a field
that cannot change results (`tracking.flush_timeout_s`), so each trial has a twin that must end bit-identical
to it. Two of them are faulted, each while it stands at a barrier before its second search checkpoint
(workers.gates), the first one written:

1. the one-worker trial: the whole node its process runs on is SIGKILLed (raylet, workers, everything);
   Tune retries the trial on the node that is left, which resumes the search from that checkpoint;
2. the 2-worker trial: one of its two Train workers is SIGKILLed; Ray Train restarts the worker group
   from that checkpoint (`resources.max_failures`).

Both must finish, and their searched architecture, their search state and their trained network must equal
their twins' bit for bit.

Several Ray nodes and a 4-trial sweep cost ~2-3 minutes on 2 cores: more than the suite's budget leaves, so
the `multinode` marker keeps it out of `make test` (run it with `pytest -m multinode`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from orchestrator.experiment import load_experiment, trials
from orchestrator.plan import plan_trial, resolve_data
from tests.gates import Gate
from tests.helpers import TINY
from tests.servers import MARKER_VAR, marked_processes, ray_head, ray_node
from workers.checkpointing import load_state
from workers.stage_io import checkpoint_names

pytestmark = [pytest.mark.multinode, pytest.mark.xdist_group("multinode")]

ROOT = Path(__file__).resolve().parents[2]
SWEEP = "lost"
OVERRIDES = (
    *TINY,
    "sweep={resources.workers.search: [1, 2], tracking.flush_timeout_s: [120, 121]}",
    "stages.search.lambda_order=0.1",
    "resources.max_concurrent_trials=null",  # as many at once as fit: what ran when Tune ignored its =1
    "resources.max_failures=1",
    "stages.pretrain.epochs=1",
    "stages.pretrain.steps_per_epoch=2",
    "stages.search.epochs=3",
    "stages.search.steps_per_epoch=2",
    "stages.train.epochs=1",
    "stages.train.steps_per_epoch=2",
)


def _plans(storage: Path) -> dict[str, object]:
    experiment = load_experiment("table8", "tiny", OVERRIDES, name=SWEEP, storage=str(storage))
    data = resolve_data(experiment, str(storage))
    return {t.trial_id: plan_trial(t, data, str(storage), SWEEP) for t in trials(experiment)}


def _search_dir(plan) -> str:
    return next(run.settings.checkpoints for run in plan.runs if "search" in run.stages)


def _node_of(pid: int, nodes: dict[str, dict]) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(name for name, node in nodes.items() if f"{MARKER_VAR}={node['marker']}".encode() in environ)


@pytest.fixture(scope="module")
def lost(tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("lost")
    storage, uri = root / "runs", f"sqlite:///{root / 'mlflow.db'}"
    plans = _plans(storage)
    ids = list(plans)
    one, two = (next(i for i in ids if f"search={w}," in i and "=120" in i) for w in (1, 2))
    gates = {trial: Gate(_search_dir(plans[trial]), "search-e0002").arm() for trial in (one, two)}
    command = [sys.executable, "-m", "orchestrator", "sweep", "table8", "--name", SWEEP, "--storage", str(storage)]
    command += ["--tracking-uri", uri, *(item for o in OVERRIDES for item in ("--set", o))]
    events: dict[str, object] = {}
    with ray_head(dashboard=False, num_cpus=0) as head, ray_node(head["gcs"], 4) as a, ray_node(head["gcs"], 4) as b:
        nodes = {"a": a, "b": b}
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        with subprocess.Popen(
            [*command, "--address", head["gcs"], "-v"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as driver:
            try:
                pid = gates[one].wait(900)
                killed = _node_of(pid, nodes)
                nodes[killed]["kill"]()  # the node the trial's process runs on, all of it
                events["node_left"] = marked_processes(nodes[killed]["marker"])
                gates[one].open()
                worker = gates[two].wait(900)  # both workers stand there; this is the last to arrive
                events["worker_title"] = Path(f"/proc/{worker}/cmdline").read_text().split("\0")[0]
                os.kill(worker, signal.SIGKILL)
                gates[two].open()
                out, _ = driver.communicate(timeout=900)
            finally:
                for gate in gates.values():
                    gate.open()
                with contextlib.suppress(ProcessLookupError):
                    driver.kill()
    twins = {trial: trial.replace("=120", "=121") for trial in (one, two)}
    yield {"plans": plans, "one": one, "two": two, "twins": twins, "out": out, "rc": driver.returncode, **events}
    for gate in gates.values():
        gate.__exit__()


def _done(plan, stage: str) -> dict:
    return json.loads((Path(plan.outputs) / stage / "_STAGE_DONE.json").read_text())


def test_both_faulted_trials_were_retried_and_the_sweep_finished(lost):
    assert lost["rc"] == 0, lost["out"][-6000:]
    assert all(f"{trial} TERMINATED" in lost["out"] for trial in lost["plans"]), lost["out"][-3000:]
    assert lost["node_left"] == []  # the node was lost whole: the retry ran on the node that is left
    assert lost["worker_title"].startswith("ray::RayTrainWorker"), lost["worker_title"]  # a Train worker, not the trial
    for which in ("one", "two"):  # each resumed its search from the checkpoint written before the fault
        names = checkpoint_names(_search_dir(lost["plans"][lost[which]]))
        assert names.count("search-e0001") == 1 and "search-e0003" in names, names


@pytest.mark.parametrize("which", ["one", "two"], ids=["node-lost", "train-worker-killed"])
def test_a_faulted_trial_ends_bit_identical_to_its_twin(lost, which):
    trial = lost[which]
    faulted, twin = lost["plans"][trial], lost["plans"][lost["twins"][trial]]
    assert _done(faulted, "search")["genotype"] == _done(twin, "search")["genotype"]
    for stage in ("search", "train"):
        got = load_state(_done(faulted, stage)["checkpoint"])["model"]
        expected = load_state(_done(twin, stage)["checkpoint"])["model"]
        assert got.keys() == expected.keys()
        for key in got:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=f"{stage}: {key}")
