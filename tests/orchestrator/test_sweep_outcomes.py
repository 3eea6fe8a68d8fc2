"""How the driver tells an interrupted sweep (issue 19, item 4), on the session's real Ray with a real SIGINT.

Tune swallows Ctrl-C: its loop ends, `fit()` returns normally and the trials it stopped are even called
TERMINATED. The driver must see that the loop was interrupted (`tune_interrupts`), and call the trials
whose last report is not the pipeline's end STOPPED (`_status`), finished ones TERMINATED.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from orchestrator.sweep import STOPPED, _status, tune_interrupts
from workers.stage_list import PIPELINE

DONE = {"psnr": 1.0, "stages_finished": len(PIPELINE)}  # what run_trial reports last


def _trainable(config: dict) -> None:
    import ray.tune

    if config["trial_id"] == "fast":
        ray.tune.report(DONE)
        return
    for step in range(600):
        ray.tune.report({"step": step, "stages_finished": 1})
        time.sleep(0.5)


def _fit(ids: list[str], path) -> object:
    import ray.tune as tune

    tuner = tune.Tuner(
        _trainable,
        param_space={"trial_id": tune.grid_search(ids)},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(name="outcomes", storage_path=str(path), verbose=0),
    )
    return tuner.fit()


def _statuses(results) -> dict[str, str]:
    return {r.config["trial_id"]: "ERROR" if r.error else _status(r.metrics or {}) for r in results}


def test_tune_swallows_ctrl_c_but_the_driver_sees_it_and_calls_the_unfinished_trial_stopped(ray_session, tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with tune_interrupts() as caught:
        finished = _fit(["fast"], tmp_path / "finished")
    assert not caught.interrupted and _statuses(finished) == {"fast": "TERMINATED"}

    marker = tmp_path / "slow-started"

    def interrupt() -> None:  # Ctrl-C (as a terminal sends it) once the fast trial is done and the slow one runs
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not marker.exists():
            texts = [path.read_text() for path in (tmp_path / "stopped").rglob("result.json")]
            if any('"step"' in text for text in texts) and any('"psnr"' in text for text in texts):
                marker.touch()  # the slow trial runs, the fast one has finished
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    with tune_interrupts() as caught:
        results = _fit(["fast", "slow"], tmp_path / "stopped")
    thread.join(timeout=5)
    assert marker.exists(), "the slow trial never reported"
    assert caught.interrupted
    assert _statuses(results) == {"fast": "TERMINATED", "slow": STOPPED}
    assert signal.getsignal(signal.SIGINT) is before  # put back as it was
