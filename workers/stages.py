"""The stage loops, each a Ray Train `train_loop_per_worker(config)` (method.md §3, Alg. 1).

- `pretrain_loop`: supernet weights only, on χ1, sandwich of widths {max, min, random, random}
  summed into one backward, combiners uniform (radius 0).
- `search_loop`: per step an architecture step on χ2, then a weight step on χ1 (arch-first,
  first-order: ambiguity 9), each a sandwich {Gumbel, max, min}; sparsestmax radius grows
  linearly over the stage; FLOPs penalty λ_flops·(ω1·F_max + ω2·F_gumbel); ordering penalty λ_order.
- `train_loop`: the derived network alone, inherited from the supernet ("train from search") or
  from scratch (Fig. 1), content loss, then an optional perceptual fine-tuning phase.

Every loop resumes from `ray.train.get_checkpoint()`, checkpoints every `checkpoint_every`
epochs and at the end (rank 0 writes, every rank reports the same number of times), and reports
per-epoch metrics. Workers report to Ray only; the orchestrator does the tracking.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from search_space.combiners import ordering_penalty
from search_space.cost import count
from search_space.derived import build_network, inherit
from search_space.genotype import Genotype
from search_space.supernet import Supernet, SupernetConfig, WidthSample
from search_space.teacher import load_teacher
from workers.batches import epoch_generator, patch_batches
from workers.checkpointing import (
    CheckpointWriteError,
    is_no_space,
    load_state,
    open_checkpoint,
    read_genotype_json,
    staged_checkpoint,
)
from workers.distributed import all_ranks_agree, average_gradients, rank_spread
from workers.losses import build_loss
from workers.pipeline import TRAIN, TRAIN_A, TRAIN_W, val_pairs
from workers.settings import OptimSettings, StageSettings
from workers.validation import evaluate_pairs

__all__ = ["LOOPS", "pretrain_loop", "search_loop", "train_loop"]

PRETRAIN_WIDTHS = ("max", "min", "random", "random")
SEARCH_FIXED_WIDTHS = ("max", "min")


class _Stage:
    """What every loop shares: settings, rank, device, targets, validation data, resume state."""

    def __init__(self, config: dict[str, Any]) -> None:
        import ray.train
        import ray.train.torch

        self.settings = settings = StageSettings.from_dict(config)
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world = context.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.manual_seed(settings.seed)  # identical initial weights on every rank
        self.teacher = None
        if settings.supervision.kind == "teacher":
            sup = settings.supervision
            if sup.weights is None:
                raise ValueError("supervision.weights: a teacher needs a weights file (RRDB_PSNR_x4.pth or similar)")
            self.teacher = load_teacher(sup.weights, nb=sup.nb, nf=sup.nf, gc=sup.gc).to(self.device)
        self.val = []
        if self.rank == 0 and settings.val_path:
            self.val = val_pairs(settings.val_path, settings.scale)[: settings.val_max_images]
        checkpoint = ray.train.get_checkpoint()
        self.resumed: dict[str, Any] | None = None
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                self.resumed = load_state(directory)

    def shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)

    def targets(self, lr: Tensor, hr: Tensor) -> Tensor:
        """Teacher(LR) (frozen, clamped to [0, 1]) or the ground-truth HR patch."""
        if self.teacher is None:
            return hr
        with torch.no_grad():
            return self.teacher(lr).clamp_(0.0, 1.0)

    def batches(self, name: str, epoch: int, stream: int, steps: int | None) -> Iterator[tuple[Tensor, Tensor]]:
        s = self.settings
        for lr, hr in patch_batches(
            self.shard(name),
            batch_size=s.batch_size,
            patch=s.patch,
            scale=s.scale,
            generator=epoch_generator(s.seed, epoch, self.rank, stream),
            steps=steps,
            name=name,
        ):
            yield lr.to(self.device), hr.to(self.device)

    def report(self, metrics: dict[str, Any], epoch: int, state: dict[str, Any], genotype: Genotype | None) -> None:
        """Report every epoch; attach a checkpoint every `checkpoint_every` epochs and at the end."""
        import ray.train

        s = self.settings
        last = epoch + 1 == self._total_epochs()
        wants_checkpoint = last or (epoch + 1) % max(1, s.checkpoint_every) == 0
        if not wants_checkpoint or self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        try:
            with staged_checkpoint(state, None if genotype is None else genotype.to_json()) as directory:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        except OSError as err:  # staging (local temp dir) or the copy to the storage path
            raise CheckpointWriteError(
                f"the checkpoint after epoch {epoch + 1} could not be written: {err}", no_space=is_no_space(err)
            ) from err

    def _total_epochs(self) -> int:
        s = self.settings
        return s.optim.epochs + (s.finetune.epochs if s.stage == "train" and s.finetune else 0)


def _sandwich(
    net: Supernet, lr: Tensor, target: Tensor, widths: Sequence[WidthSample | str], loss: Callable, gen
) -> Tensor:
    """Σ over width settings of the loss: one backward serves all (AGD `_loss`, Alg. 1 line 7)."""
    return sum((loss(net(lr, w, generator=gen), target) for w in widths), torch.zeros((), device=lr.device))


@contextlib.contextmanager
def _frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Skip gradients of `params` for one step (the other level's step needs none)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _schedule(optimizer: torch.optim.Optimizer, optim: OptimSettings) -> torch.optim.lr_scheduler.MultiStepLR:
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(optim.milestones), gamma=optim.gamma)


def _loss(stage: _Stage, kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    loss = build_loss(kind, stage.settings.vgg_weights)
    return loss.to(stage.device) if isinstance(loss, nn.Module) else loss


def _load_supernet(stage: _Stage, weights_from: str | None) -> Supernet:
    net = Supernet(SupernetConfig(**_supernet_kwargs(stage.settings.supernet)))
    if weights_from:
        with open_checkpoint(weights_from) as directory:
            net.load_state_dict(load_state(directory)["model"])
    return net


def _supernet_kwargs(raw: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly lists back to the tuples SupernetConfig holds."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


# --- pretrain ---------------------------------------------------------------------------------
def pretrain_loop(config: dict[str, Any]) -> None:
    """Supernet weights only, on χ1, sandwich {max, min, random, random}, radius 0 (Alg. 1 lines 5-11)."""
    import ray.train.torch

    stage = _Stage(config)
    s = stage.settings
    net = _load_supernet(stage, s.init_from)
    net.set_radius(0.0)
    for p in net.arch_parameters():
        p.requires_grad_(False)
    net = ray.train.torch.prepare_model(net, parallel_strategy=None)
    optimizer = torch.optim.Adam(net.weight_parameters(), lr=s.optim.lr)
    scheduler = _schedule(optimizer, s.optim)
    start = _restore(stage, net, {"optimizer": optimizer, "scheduler": scheduler})
    loss_fn = _loss(stage, s.optim.loss)
    for epoch in range(start, s.optim.epochs):
        widths_gen = epoch_generator(s.seed, epoch, 0, stream=2)  # same width sandwich on every rank
        losses = []
        batches = stage.batches(TRAIN_W, epoch, 0, s.optim.steps_per_epoch)
        while all_ranks_agree((batch := next(batches, None)) is not None, stage.device):
            lr, hr = batch
            loss = _sandwich(net, lr, stage.targets(lr, hr), PRETRAIN_WIDTHS, loss_fn, widths_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _step(optimizer, net.weight_parameters(), s.optim.grad_clip)
            losses.append(float(loss.detach()))
        scheduler.step()
        metrics = {"epoch": epoch, "loss": _mean(losses), "lr": optimizer.param_groups[0]["lr"], "steps": len(losses)}
        metrics |= _validate_supernet(stage, net)
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        stage.report(metrics, epoch, state | {"epoch": epoch + 1, "stage": "pretrain"}, None)


def _step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], clip: float | None) -> None:
    average_gradients(params)
    if clip:
        nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def _restore(stage: _Stage, net: nn.Module, parts: dict[str, Any]) -> int:
    """Load model/optimiser/scheduler state from the resume checkpoint; return the next epoch."""
    if stage.resumed is None:
        return 0
    net.load_state_dict(stage.resumed["model"])
    for key, part in parts.items():
        part.load_state_dict(stage.resumed[key])
    return int(stage.resumed["epoch"])


def _validate_supernet(stage: _Stage, net: Supernet) -> dict[str, float]:
    if not stage.val:
        return {}
    net.eval()
    try:
        return evaluate_pairs(lambda x: net(x, "argmax"), stage.val, stage.settings.scale, stage.device)
    finally:
        net.train()


# --- search -----------------------------------------------------------------------------------
def search_loop(config: dict[str, Any]) -> None:
    """Alternate architecture steps on χ2 and weight steps on χ1 (Alg. 1 lines 13-24, arch first)."""
    import ray.train.torch

    stage = _Stage(config)
    s = stage.settings
    net = _load_supernet(stage, s.init_from)
    net = ray.train.torch.prepare_model(net, parallel_strategy=None)
    weight_opt = torch.optim.Adam(net.weight_parameters(), lr=s.optim.lr)
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=s.arch_lr, betas=s.arch_betas, weight_decay=0.0)
    scheduler = _schedule(weight_opt, s.optim)
    start = _restore(stage, net, {"weight_opt": weight_opt, "arch_opt": arch_opt, "scheduler": scheduler})
    loss_fn = _loss(stage, s.optim.loss)
    full_paths = net.tree.full_paths.to(stage.device)
    epochs, steps = s.optim.epochs, s.optim.steps_per_epoch
    for epoch in range(start, epochs):
        widths_gen = epoch_generator(s.seed, epoch, 0, stream=2)
        weight_batches = stage.batches(TRAIN_W, epoch, 0, steps)
        arch_batches = stage.batches(TRAIN_A, epoch, 1, steps)
        log: dict[str, list[float]] = {"loss_w": [], "loss_a": [], "flops_penalty": [], "order_penalty": []}
        for i in itertools.count():
            pair = next(weight_batches, None), next(arch_batches, None)
            if not all_ranks_agree(None not in pair, stage.device):
                break
            (lr_w, hr_w), (lr_a, hr_a) = pair
            fraction = (epoch + i / steps) / epochs if steps else epoch / epochs
            net.set_radius(s.radius_start + (s.radius_end - s.radius_start) * fraction)
            # architecture step on χ2
            with _frozen(net.weight_parameters()):
                gumbel = net.sample_widths("gumbel", widths_gen)
                loss_a = _sandwich(net, lr_a, stage.targets(lr_a, hr_a), (gumbel, *SEARCH_FIXED_WIDTHS), loss_fn, None)
                flops = net.flops_penalty(gumbel) if s.lambda_flops else torch.zeros((), device=stage.device)
                order = _order(net, full_paths, s.lambda_order)
                arch_opt.zero_grad(set_to_none=True)
                (loss_a + s.lambda_flops * flops + order).backward()
                average_gradients(net.arch_parameters())
                arch_opt.step()
            # weight step on χ1
            with _frozen(net.arch_parameters()):
                gumbel = net.sample_widths("gumbel", widths_gen)
                loss_w = _sandwich(net, lr_w, stage.targets(lr_w, hr_w), (gumbel, *SEARCH_FIXED_WIDTHS), loss_fn, None)
                weight_opt.zero_grad(set_to_none=True)
                loss_w.backward()
                _step(weight_opt, net.weight_parameters(), s.optim.grad_clip)
            step_values = {"loss_w": loss_w, "loss_a": loss_a, "flops_penalty": flops, "order_penalty": order}
            for key, value in step_values.items():
                log[key].append(float(value.detach()))
        scheduler.step()
        genotype = net.derive()
        metrics = {key: _mean(values) for key, values in log.items()}
        metrics |= _architecture_metrics(net, genotype) | {"epoch": epoch, "steps": len(log["loss_w"])}
        metrics["arch_rank_spread"] = rank_spread(net.arch_parameters())
        metrics["weight_rank_spread"] = rank_spread(net.weight_parameters())
        metrics |= _validate_supernet(stage, net)
        state = {
            "model": net.state_dict(),
            "weight_opt": weight_opt.state_dict(),
            "arch_opt": arch_opt.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
        stage.report(metrics, epoch, state | {"epoch": epoch + 1, "stage": "search"}, genotype)


def _order(net: Supernet, full_paths: Tensor, lam: float) -> Tensor:
    """The ordering penalty on the raw path logits (zero when the path is fixed or λ is 0)."""
    if not lam or net.config.levels != "trilevel":
        return torch.zeros((), device=full_paths.device)
    return ordering_penalty(net.path_logits, full_paths, lam)


@torch.no_grad()
def _architecture_metrics(net: Supernet, genotype: Genotype) -> dict[str, Any]:
    op_w, path_w = net.op_weights(), net.path_weights()
    expected = net.expected_cost(op_w, path_w, net.sample_widths("argmax"))
    cost = count(genotype, net.config.cost_lr_size)
    return {
        "radius": float(net.radius),
        "expected_gflops": float(expected) / 1e9,
        "derived_gflops": cost.gmacs,
        "derived_params_m": cost.params_m,
        "path": str(list(genotype.path)),
        "genotype": genotype.to_json(indent=None),
        "nonzero_ops": float((op_w > 0).float().mean()),
        "nonzero_paths": float((path_w > 0).float().sum()),
    }


# --- train ------------------------------------------------------------------------------------
def train_loop(config: dict[str, Any]) -> None:
    """The derived network alone: content phase, then the optional perceptual fine-tuning phase."""
    import ray.train.torch

    stage = _Stage(config)
    s = stage.settings
    genotype = _stage_genotype(s)
    if s.from_search:
        if not s.init_from:
            raise ValueError("train.from_search needs the search stage's checkpoint (init_from)")
        net: nn.Module = inherit(_load_supernet(stage, s.init_from), genotype)
    else:
        torch.manual_seed(s.seed)
        net = build_network(genotype)
    phases = [s.optim] + ([s.finetune] if s.finetune else [])
    model = ray.train.torch.prepare_model(net)
    bare = model.module if hasattr(model, "module") else model
    cost = count(genotype)
    epoch_offset = 0
    resumed_epoch = int(stage.resumed["epoch"]) if stage.resumed else 0
    if stage.resumed:
        bare.load_state_dict(stage.resumed["model"])
    for phase_index, phase in enumerate(phases):
        if resumed_epoch >= epoch_offset + phase.epochs:
            epoch_offset += phase.epochs
            continue
        optimizer = torch.optim.Adam(bare.parameters(), lr=phase.lr)
        scheduler = _schedule(optimizer, phase)
        if stage.resumed and stage.resumed.get("phase") == phase_index:
            optimizer.load_state_dict(stage.resumed["optimizer"])
            scheduler.load_state_dict(stage.resumed["scheduler"])
        loss_fn = _loss(stage, phase.loss)
        for local_epoch in range(max(0, resumed_epoch - epoch_offset), phase.epochs):
            epoch = epoch_offset + local_epoch
            losses = []
            batches = stage.batches(TRAIN, epoch, 0, phase.steps_per_epoch)
            while all_ranks_agree((batch := next(batches, None)) is not None, stage.device):
                lr, hr = batch
                loss = loss_fn(model(lr), stage.targets(lr, hr))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if phase.grad_clip:
                    nn.utils.clip_grad_norm_(bare.parameters(), phase.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
            scheduler.step()
            metrics = {
                "epoch": epoch,
                "phase": phase.loss,
                "loss": _mean(losses),
                "lr": optimizer.param_groups[0]["lr"],
                "steps": len(losses),
                "params_m": cost.params_m,
                "gflops": cost.gmacs,
            }
            if stage.val:
                bare.eval()
                metrics |= evaluate_pairs(bare, stage.val, s.scale, stage.device)
                bare.train()
            state = {
                "model": bare.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "phase": phase_index,
                "stage": "train",
            }
            stage.report(metrics, epoch, state, genotype)
        epoch_offset += phase.epochs


def _stage_genotype(s: StageSettings) -> Genotype:
    """The genotype to train: given explicitly, else the one the search checkpoint derived."""
    if s.genotype is not None:
        return Genotype.from_dict(s.genotype)
    if not s.init_from:
        raise ValueError("train stage: give a genotype or the search checkpoint to take it from (init_from)")
    with open_checkpoint(s.init_from) as directory:
        data = read_genotype_json(directory)
    if data is None:
        raise ValueError(f"{s.init_from}: the checkpoint holds no genotype.json; was it a search checkpoint?")
    return Genotype.from_dict(data)


LOOPS: dict[str, Callable[[dict[str, Any]], None]] = {
    "pretrain": pretrain_loop,
    "search": search_loop,
    "train": train_loop,
}
