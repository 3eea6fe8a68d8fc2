"""A multi-worker run's stages on local gloo processes, without Ray: the uninterrupted reference of a Train run.

Each rank is what a Ray Train worker of the run is, minus Ray: a process in a torch process group (gloo, as Train
sets up for CPU workers), the run's one thread, its equal share of the decoded rows (`workers.pipeline.worker_rows`,
what `RayStageIO` decodes) and the same stage loops (`workers.stages.run_stages`) writing the same checkpoints and
done markers (rank 0). Two processes cost a torch import each: a Train run costs a controller, its workers and
Ray's start of them.
"""

from __future__ import annotations

import torch.distributed as dist
import torch.multiprocessing as mp

from workers.pipeline import worker_rows
from workers.settings import RunSettings
from workers.stage_io import LocalStageIO
from workers.stages import run_stages

__all__ = ["run_ranks"]


def run_ranks(settings: RunSettings, world: int, rendezvous: str) -> None:
    """Run `settings`' stages on `world` fresh processes, one rank each; `rendezvous` a file path nobody uses yet."""
    if settings.streamed:
        raise ValueError(f"run_ranks decodes every data set itself; these are streamed: {settings.streamed}")
    mp.spawn(_rank, args=(settings, world, rendezvous), nprocs=world, join=True)


def _rank(rank: int, settings: RunSettings, world: int, rendezvous: str) -> None:
    # a file rendezvous: no port to pick, so none another process can take first
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        scale = settings.stages[0].scale
        rows = {name: worker_rows(s.path, scale, s.role, rank, world) for name, s in settings.datasets.items()}
        run_stages(settings, LocalStageIO(checkpoints=settings.checkpoints, datasets=rows, rank=rank, world=world))
    finally:
        dist.destroy_process_group()
