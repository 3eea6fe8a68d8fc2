"""What a person sees while a sweep runs: one live table of the trials, the warnings that matter, no Ray logs.

`quiet_output` sends everything written to the process's stdout and stderr (Ray's driver logs, the
worker output Ray forwards, Ray Data's execution lines, Tune's status tables, C++ warnings) to a log
file, and hands back the terminal. `SweepConsole` draws the live table on it from the sweep's
`ReportHub`: per trial its stage, epoch out of total, loss, latest validation PSNR and ETA, then the
final PSNR beside bicubic. Warnings that trials log (an MLflow outage, what was not logged) and
failed trials are shown under the table. `trilevel … -v` skips all this and shows Ray's output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.plan import TrialPlan, stage_steps
from workers.stage_list import EVALUATE

__all__ = ["SweepConsole", "quiet_output", "terminal_warnings"]

_POLL_S = 1.0


@contextlib.contextmanager
def quiet_output(log_path: Path) -> Iterator[TextIO]:
    """Redirect file descriptors 1 and 2 (and so every child process started meanwhile) to `log_path`.

    Yields a text stream on the original stdout, for what the person at the terminal should see.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()


@contextlib.contextmanager
def terminal_warnings(console: Console, logger: str = "orchestrator") -> Iterator[None]:
    """Show `logger`'s warnings (the driver's own: tracking outages, what was not logged) on the terminal."""

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            console.print(Text(f"warning: {record.getMessage()}", style="yellow"))

    handler = _Handler(logging.WARNING)
    target = logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield
    finally:
        target.removeHandler(handler)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) else ""


class SweepConsole:
    """A live table of the sweep's trials on `console`, fed by the sweep's `ReportHub`."""

    def __init__(self, console: Console, sweep: str, log_file: str | None = None) -> None:
        self.console = console
        self.sweep = sweep
        self.log_file = log_file
        self.plans: Mapping[str, TrialPlan] = {}
        self.hub: Any = None
        self.failed: dict[str, str] = {}
        self.progress: dict[str, dict[str, Any]] = {}
        self._started = time.time()
        self._live: Live | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the sweep's side ---------------------------------------------------------------------
    def watch(self, plans: Mapping[str, TrialPlan], hub: Any) -> None:
        """Start drawing; called by the sweep once its trials are planned and its hub is up."""
        self.plans, self.hub = plans, hub
        self._live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
        self._live.start()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="sweep-console")
        self._thread.start()

    def trial_failed(self, trial_id: str, error: str) -> None:
        self.failed[trial_id] = error

    def close(self) -> None:
        """Draw the final state once more and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._refresh()
        if self._live is not None:
            self._live.stop()
            self._live = None
            self.console.print()

    # --- drawing ------------------------------------------------------------------------------
    def _poll(self) -> None:
        while not self._stop.wait(_POLL_S):
            self._refresh()

    def _refresh(self) -> None:
        if self.hub is not None:
            import ray

            with contextlib.suppress(Exception):
                self.progress = ray.get(self.hub.progress.remote(), timeout=5)
        if self._live is not None:
            self._live.update(self.render())

    def render(self) -> Group:
        table = Table(title=f"sweep {self.sweep} · {_duration(time.time() - self._started)}", title_justify="left")
        for column in ("trial", "stage", "epoch", "loss", "val PSNR", "ETA", "test PSNR vs bicubic"):
            table.add_column(column, justify="left" if column in ("trial", "stage") else "right", no_wrap=True)
        warnings: list[Text] = []
        steps = {trial_id: stage_steps(plan) for trial_id, plan in self.plans.items()}
        for trial_id, p in self.progress.items():  # trials a search algorithm suggested: planned in the trial
            if trial_id not in steps and "stage_steps" in p:
                steps[trial_id] = {stage: tuple(v) for stage, v in p["stage_steps"].items()}
        for trial_id, stages in steps.items():
            table.add_row(*self._row(trial_id, stages))
            for warning in self.progress.get(trial_id, {}).get("warnings", [])[-2:]:
                warnings.append(Text(f"{trial_id}: {warning}", style="yellow"))
        for trial_id, error in self.failed.items():
            warnings.append(Text(f"{trial_id} FAILED: {error}", style="bold red"))
        return Group(table, *warnings)

    def _row(self, trial_id: str, stages: dict[str, tuple[int, int]]) -> list[str | Text]:
        p = self.progress.get(trial_id, {})
        if trial_id in self.failed:
            return [trial_id, p.get("stage", ""), "", "", "", "", Text("failed", style="bold red")]
        if not p.get("state"):  # not started (a drawn trial that planned itself has only its stage_steps)
            return [trial_id, "queued", "", "", "", "", ""]
        if p.get("state") == "stopped":
            return [trial_id, "stopped", "", "", _number(p.get("val_psnr")), "", "stopped by the scheduler"]
        stage = p.get("stage", "")
        if p.get("state") == "done":
            return [trial_id, "done", "", "", "", "", _result(p.get("final", {}))]
        if p.get("state") == "evaluating":
            return [trial_id, EVALUATE, "", "", _number(p.get("val_psnr")), "", ""]
        epochs = p.get("epochs")
        epoch = f"{p['epoch'] + 1}/{epochs}" if "epoch" in p and epochs else ""
        loss = p.get("loss", p.get("loss_w"))
        return [trial_id, stage, epoch, _number(loss, 3), _number(p.get("val_psnr")), self._eta(stages, p), ""]

    def _eta(self, stages: dict[str, tuple[int, int]], p: dict[str, Any]) -> str:
        """Remaining epochs of this stage at its pace, then later stages at this stage's time per step."""
        stage, epoch_s, epochs = p.get("stage"), p.get("epoch_s"), p.get("epochs")
        if stage not in stages or not epoch_s or not epochs or "epoch" not in p:
            return ""
        total_epochs, total_steps = stages[stage]
        per_step = epoch_s * total_epochs / max(1, total_steps)
        remaining = (epochs - p["epoch"] - 1) * epoch_s
        later = list(stages)[list(stages).index(stage) + 1 :]
        remaining += sum(stages[s][1] for s in later) * per_step
        return "~" + _duration(remaining)


def _result(final: Mapping[str, Any]) -> Text:
    """The trial's PSNR on its first test set beside bicubic; loudly red when it does not beat it."""
    sets = [k.split("/", 1)[1] for k in final if k.startswith("psnr/")]
    if not sets:
        return Text("done")
    name = sets[0]
    ours, bicubic = final.get(f"psnr/{name}"), final.get(f"psnr_bicubic/{name}")
    if bicubic is None:
        return Text(f"{ours:.2f} dB")
    delta = ours - bicubic
    if delta > 0:
        return Text(f"{ours:.2f} vs {bicubic:.2f} ({delta:+.2f})", style="green")
    return Text(f"{ours:.2f} vs {bicubic:.2f} ({delta:+.2f}) BELOW BICUBIC", style="bold red")
