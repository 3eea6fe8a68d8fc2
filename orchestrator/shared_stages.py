"""A trial's side of the stage store: reuse a stored stage, wait for one another trial computes, claim the rest.

Before each run of stages, `SharedStages.next_segment` walks the run's unfinished stages in order:

- a stage stored under its key (and passing the store's checks) is *linked*: the trial's done marker
  (`<outputs>/<stage>/_STAGE_DONE.json`) is the stored result with its origin, pointing at the
  computing run's checkpoints (a reference, not a copy);
- a stage another live trial holds the claim of is waited for (polled), then linked;
- otherwise the trial claims it, and greedily the stages after it that nobody holds, and runs just
  those (the *segment*): a run of stages is split where a shared stage begins or ends, so two trials
  that differ only in their search share the pretrain and compute their searches apart. The
  segment keeps its run's name and checkpoint directory, so a killed trial resumes where it was.

The stage loops publish each stage they finish (`workers.stages`), at once, so a waiting trial goes
on while the computing one still trains its later stages; the claims are released after the segment
(also when it fails: the next trial takes over at once; a killed process's claims expire).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from orchestrator.plan import TrainRunPlan
from workers.stage_outputs import read_stage_result, write_stage_result
from workers.stage_store import Claim, ClaimHeld, Heartbeat, entry_dir, lookup, publish, try_claim
from workers.stage_store.store import StoredStage

__all__ = ["SharedStages"]

_log = logging.getLogger(__name__)


class SharedStages:
    """The stage store as one trial uses it; `on_wait(stage, holder)` is told while it waits for a stage."""

    def __init__(
        self,
        owner: str,
        on_wait: Callable[[str, ClaimHeld], None] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.owner = owner  # <sweep>/<trial>
        self.on_wait = on_wait
        self.poll_s = poll_s
        self.heartbeat = Heartbeat()
        self.held: list[Claim] = []
        self.reused: dict[str, StoredStage] = {}

    def next_segment(self, run: TrainRunPlan) -> TrainRunPlan | None:
        """The run's next stages this trial computes now (claimed), or None when every stage is done."""
        settings = run.settings
        store = settings.store
        pending = [s for s in run.stages if read_stage_result(settings.outputs, s) is None]
        if not pending:
            return None
        if store is None or not store.reuse:  # no store, or --no-reuse: compute everything, wait for nobody
            return run
        while pending:
            stage = pending[0]
            key = store.keys[stage]
            if self._link(run, stage):
                pending.pop(0)
                continue
            got = try_claim(entry_dir(store.storage, stage, key.key), self.owner)
            if isinstance(got, ClaimHeld):
                if self.on_wait is not None:
                    self.on_wait(stage, got)
                time.sleep(self.poll_s)
                continue
            if self._link(run, stage):  # published between the lookup and the claim
                got.release()
                pending.pop(0)
                continue
            claimed = [stage]
            self._hold(got)
            for later in pending[1:]:
                later_key = store.keys[later]
                if lookup(store.storage, later_key) is not None:
                    break
                more = try_claim(entry_dir(store.storage, later, later_key.key), self.owner)
                if isinstance(more, ClaimHeld):
                    break
                self._hold(more)
                claimed.append(later)
            return dataclasses.replace(run, settings=dataclasses.replace(settings, stages=self._only(run, claimed)))
        return None

    @staticmethod
    def _only(run: TrainRunPlan, stages: list[str]) -> tuple:
        return tuple(s for s in run.settings.stages if s.stage in stages)

    def _hold(self, claim: Claim) -> None:
        self.heartbeat.hold(claim)
        self.held.append(claim)

    def _link(self, run: TrainRunPlan, stage: str) -> bool:
        """Make the stored stage this trial's, if the store has it; whether it did."""
        store = run.settings.store
        assert store is not None
        stored = lookup(store.storage, store.keys[stage])
        if stored is None:
            return False
        origin = {"reused": True, "key": stored.key, "entry": stored.entry, "computed_by": stored.computed_by}
        write_stage_result(run.settings.outputs, dataclasses.replace(stored.result, origin=origin))
        self.reused[stage] = stored
        _log.info("%s: stage %s reused from %s", self.owner, stage, stored.entry)
        return True

    def publish_missing(self, run: TrainRunPlan) -> None:
        """Store the stages this trial computed that the store lacks (a kill between marker and entry)."""
        store = run.settings.store
        if store is None:
            return
        for stage in run.stages:
            result = read_stage_result(run.settings.outputs, stage)
            if result is None or result.origin is not None or lookup(store.storage, store.keys[stage]) is not None:
                continue
            computed_by = store.computed_by | {"checkpoints": run.settings.checkpoints}
            publish(store.storage, store.keys[stage], result, computed_by)

    def release(self) -> None:
        """Give up every claim this trial holds (after its segment ran, or failed)."""
        for claim in self.held:
            self.heartbeat.release(claim)
        self.held = []

    def close(self) -> None:
        self.release()
        self.heartbeat.stop()
