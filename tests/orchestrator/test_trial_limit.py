"""`resources.max_concurrent_trials` holds, in a new sweep and in a resumed one, on the session's real Ray Tune.

Ray Tune 2.60 ignores its own `max_concurrent_trials` beside a variant generator and starts every
restored trial of a resume at once; `orchestrator.trial_limit` holds the limit in the scheduler. The
trials are tiny Tune function trainables with the sweep's own scheduler, search algorithm, trial
reservation and resume settings (`orchestrator.tuning`, `orchestrator.sweep._apply_run_settings`).
Each trial marks itself running in a shared folder, looks a moment for another running trial, and
writes down the trials it saw: the proof of overlap is the trials' own record, not a clock (the
moment only bounds how long a lone trial looks; an unlimited sweep's trials stop once they met).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.experiment import Experiment, load_experiment

pytestmark = pytest.mark.xdist_group("cluster")  # the session's Ray (tests/conftest.py)

TRIALS = ["a", "b"]
ALONE_S = 1.5  # how long a trial of a limited sweep looks for company: long enough to see a trial started beside it
TOGETHER_S = 120.0  # an unlimited sweep's trial waits for its peer (both stop looking once one saw the other)


def _trainable(config: dict) -> None:
    import ray.tune

    folder = Path(config["folder"])
    me = folder / f"running-{config['trial']}"
    me.touch()
    seen: set[str] = set()
    deadline = time.monotonic() + float((folder / "look_s").read_text())  # a file: a resume keeps the config
    while not seen and not (folder / "met").exists() and time.monotonic() < deadline:
        seen = {path.name.removeprefix("running-") for path in folder.glob("running-*")} - {config["trial"]}
        time.sleep(0.05)
    if seen:
        (folder / "met").touch()  # the peer may not poll before this trial leaves: it stops looking too
    (folder / f"saw-{config['trial']}.json").write_text(json.dumps(sorted(seen)))
    me.unlink()  # before the trial ends: a trial started after it cannot see it
    if (folder / "fail").exists():
        raise RuntimeError("the first run fails every trial, so that the resume restores them all")
    ray.tune.report({"done": 1})


def _experiment(limit: str) -> Experiment:
    return load_experiment("table8", "tiny", [f"resources.max_concurrent_trials={limit}"])


def _trainable_of(experiment: Experiment):
    import ray.tune as tune

    return tune.with_resources(_trainable, {"cpu": experiment.resources.trial_reservation()})


def _new_sweep(tmp_path: Path, limit: str, look_s: float, *, fail: bool = False) -> tuple[Path, dict[str, list[str]]]:
    import ray.tune as tune

    from orchestrator.tuning import scheduler, search_algorithm

    folder = tmp_path / f"limit-{limit}"
    folder.mkdir()
    (folder / "look_s").write_text(str(look_s))
    if fail:
        (folder / "fail").touch()
    experiment = _experiment(limit)
    tuner = tune.Tuner(
        _trainable_of(experiment),
        param_space={"trial": tune.grid_search(TRIALS), "folder": str(folder)},
        tune_config=tune.TuneConfig(scheduler=scheduler(experiment), search_alg=search_algorithm(experiment)),
        run_config=tune.RunConfig(
            name="sweep", storage_path=str(folder), verbose=0, failure_config=tune.FailureConfig(max_failures=0)
        ),
    )
    tuner.fit()
    return folder, _seen(folder)


def _seen(folder: Path) -> dict[str, list[str]]:
    return {path.stem.removeprefix("saw-"): json.loads(path.read_text()) for path in folder.glob("saw-*.json")}


def test_a_new_sweep_with_limit_1_runs_one_trial_at_a_time(ray_session, tmp_path):
    _, limited = _new_sweep(tmp_path, "1", ALONE_S)
    assert limited == {"a": [], "b": []}, f"with max_concurrent_trials=1 trials saw each other running: {limited}"


def test_unset_runs_trials_together_and_a_resume_with_limit_1_runs_them_one_at_a_time(ray_session, tmp_path):
    """Unset, both trials run at once (then fail); `--set resources.max_concurrent_trials=1` reruns them in turn."""
    import ray.tune as tune

    from orchestrator.sweep import _apply_run_settings

    folder, unlimited = _new_sweep(tmp_path, "null", TOGETHER_S, fail=True)
    assert sorted(unlimited) == TRIALS and any(unlimited.values()), f"unset, no trial ran beside another: {unlimited}"
    for path in [*folder.glob("saw-*.json"), folder / "met", folder / "fail"]:
        path.unlink()
    (folder / "look_s").write_text(str(ALONE_S))
    experiment = _experiment("1")  # the saved experiment with `--set resources.max_concurrent_trials=1`
    tuner = tune.Tuner.restore(str(folder / "sweep"), _trainable_of(experiment), resume_errored=True)
    _apply_run_settings(tuner, experiment)
    results = tuner.fit()
    assert not results.errors, results.errors
    resumed = _seen(folder)
    assert resumed == {"a": [], "b": []}, f"the resume ran the restored trials side by side: {resumed}"
