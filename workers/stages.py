"""The stage loops and the per-worker entry point that runs a trial's stages in one worker group.

- `pretrain`: supernet weights only, on χ1, sandwich {max, min, random, random}, radius 0.
- `search`: per step an architecture step on χ2, then a weight step on χ1 (`workers.search_step`),
  sparsestmax radius growing linearly per iteration to `radius_end` on the last step, SSN freezing,
  FLOPs penalty (optionally steered to a target), ordering penalty.
- `train`: the derived network alone, inherited from the supernet ("train from search") or from
  scratch (Fig. 1), content loss, then an optional perceptual fine-tuning phase.

`run_stages` runs consecutive stages in order inside one worker group (one TorchTrainer run per
trial, not per stage): a stage with a done marker is skipped, the stage the latest checkpoint
belongs to resumes from it, the next one starts from the previous stage's final weights. Every
epoch is reported (metrics tagged with the stage, so the trial routes them to the stage's MLflow
run); a checkpoint `<stage>-e<epoch>` is attached every `checkpoint_every` epochs and at the end.
Loops talk only to a `StageIO`, so they run in Ray Train and in a plain process alike.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from search_space.cost import count
from search_space.derived import build_network
from search_space.genotype import Genotype
from search_space.random_arch import flops_matched
from search_space.supernet import Supernet, inherit
from search_space.teacher import load_teacher
from workers.batches import epoch_generator, patch_batches
from workers.checkpointing import load_state, open_checkpoint
from workers.distributed import all_ranks_agree, rank_spread
from workers.gates import checkpoint_point, gate
from workers.losses import build_loss
from workers.pipeline import finish_crops, val_pairs
from workers.precision import prepare, run_forward, set_deterministic
from workers.prefetch import prefetched
from workers.retention import delete_checkpoints, to_delete
from workers.search_step import FlopsController, optimizer_step, pretrain_step, radius_at, search_step
from workers.settings import OptimSettings, RunSettings, StageSettings
from workers.stage_io import RayStageIO, StageIO, checkpoint_names
from workers.stage_outputs import StageResult, read_stage_result, write_stage_result
from workers.stage_store import publish
from workers.validation import evaluate_pairs

__all__ = ["LOOPS", "StageContext", "checkpoint_name", "run_stages", "train_fn_per_worker"]

ModelState = dict[str, Tensor]
Resume = tuple[dict[str, Any] | None, str | None]


def checkpoint_name(stage: str, epoch: int) -> str:
    """Directory name of the checkpoint a stage reports after `epoch` epochs (1-based)."""
    return f"{stage}-e{epoch:04d}"


class StageContext:
    """What the stages of one run share: the IO, the teacher, validation pairs and losses."""

    def __init__(self, run: RunSettings, io: StageIO) -> None:
        self.run = run
        self.io = io
        self.device = io.device
        # where a batch's crops are flipped, made NCHW and float: on a GPU (`finish_crops`), else by the cutting thread
        self.finish_on_device = torch.device(self.device).type != "cpu"
        supervision = run.stages[0].supervision
        self.teacher: nn.Module | None = None
        if supervision.kind == "teacher":
            if supervision.weights is None:
                raise ValueError("supervision.weights: a teacher needs a weights file (RRDB_PSNR_x4.pth or similar)")
            self.teacher = load_teacher(supervision.weights, nb=supervision.nb, nf=supervision.nf, gc=supervision.gc)
            self.teacher = self.teacher.to(self.device)
        self.val: list = []
        if io.rank == 0 and run.val_path:
            self.val = val_pairs(run.val_path, run.stages[0].scale)[: run.val_max_images]
        self._losses: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
        self._last_report = time.monotonic()
        self.history: list[dict[str, float]] = []  # numeric metrics of every epoch of the running stage
        # The run's checkpoints on disk, oldest first (those of an earlier process of this run included).
        self._saved = [io.checkpoint_path(name) for name in _registered(run.checkpoints)] if io.rank == 0 else []

    def targets(self, lr: Tensor, hr: Tensor) -> Tensor:
        """Teacher(LR) (frozen, clamped to [0, 1]) or the ground-truth HR patch."""
        if self.teacher is None:
            return hr
        with torch.no_grad():
            return self.teacher(lr).clamp_(0.0, 1.0)

    def loss(self, kind: str, vgg_weights: str | None) -> Callable[[Tensor, Tensor], Tensor]:
        if kind not in self._losses:
            loss = build_loss(kind, vgg_weights)
            self._losses[kind] = loss.to(self.device) if isinstance(loss, nn.Module) else loss
        return self._losses[kind]

    def batches(
        self, settings: StageSettings, role: str, epoch: int, stream: int, optim: OptimSettings
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(LR, target, HR) batches of one epoch from the stage's `role` dataset (w, a or all).

        Rows are decoded and cut on a background thread, a batch ahead of the step (`workers.prefetch`;
        `data.cut_threads` threads cut). Off the CPU, a batch is cut as uint8 crops of whole pixel rows and
        finished on the device (flips, NCHW, float: `finish_crops`, the CPU's batch bit for bit), so the
        cutting thread does ~0.3 of the work and a quarter of the bytes are copied; on the CPU the cutting
        thread finishes it. The copy, the finish and the teacher stay on this thread.
        """
        name = settings.datasets[role]
        cpu_batches = patch_batches(
            self.io.rows(name),
            batch_size=optim.batch_size,
            patch=settings.patch,
            scale=settings.scale,
            generator=epoch_generator(settings.seed, epoch, self.io.rank, stream),
            steps=optim.steps_per_epoch,
            name=name,
            crops_per_image=settings.crops_per_image,
            cut_threads=settings.cut_threads,
            for_device=self.finish_on_device,
        )
        for batch in prefetched(cpu_batches):
            if self.finish_on_device:
                lr, hr = finish_crops(batch, self.device)
            else:
                lr, hr = batch[0].to(self.device), batch[1].to(self.device)
            yield lr, self.targets(lr, hr), hr

    def validate(self, forward: Callable[[Tensor], Tensor], net: nn.Module) -> dict[str, float]:
        """Validation PSNR/SSIM of `forward` on rank 0 (empty elsewhere or without a val set)."""
        if not self.val:
            return {}
        was_training = net.training
        net.eval()
        try:
            return evaluate_pairs(forward, self.val, self.run.stages[0].scale, self.device)
        finally:
            net.train(was_training)

    def report(
        self,
        settings: StageSettings,
        epoch: int,
        metrics: dict[str, Any],
        state: dict[str, Any],
        genotype: Genotype | None,
    ) -> Saved | None:
        """Report epoch `epoch` (0-based); attach a checkpoint on schedule and return what was saved."""
        total = settings.total_epochs
        last = epoch + 1 == total
        now = time.monotonic()
        metrics = metrics | {"stage": settings.stage, "epoch": epoch, "epochs": total, "stage_finished": last}
        metrics["epoch_s"], self._last_report = now - self._last_report, now  # wall time since the last report
        self.history.append(_numbers(metrics))
        if not (last or (epoch + 1) % max(1, settings.checkpoint_every) == 0):
            self.io.report(metrics, None, None, "")
            return None
        name = checkpoint_name(settings.stage, epoch + 1)
        full = state | {"stage": settings.stage, "epoch": epoch + 1, "metrics": _plain(metrics)}
        full["history"] = list(self.history)  # kept with the checkpoint: a resumed stage keeps its past epochs
        if genotype is not None:
            full["genotype"] = genotype.to_dict()
        gate(checkpoint_point(self.run.checkpoints, name))  # test-only: a fault test's barrier (workers.gates)
        self.io.report(metrics, full, None if genotype is None else genotype.to_json(), name)
        saved = Saved(self.io.checkpoint_path(name), full)
        self._retain(settings, saved)
        return saved

    def _retain(self, settings: StageSettings, saved: Saved) -> None:
        """Keep the run's last K checkpoints and those a stage result or the best names (`workers.retention`)."""
        if self.io.rank != 0:
            return
        if saved.path in self._saved:
            self._saved.remove(saved.path)  # an epoch redone after a resume: it is the newest again
        self._saved.append(saved.path)
        if settings.keep_checkpoints is None:
            return
        protected = {saved.path, saved.state.get("best", {}).get("checkpoint")}
        for stage in LOOPS:
            done = read_stage_result(self.run.outputs, stage)
            if done is not None:
                protected |= {done.checkpoint, done.best_checkpoint}
        old = to_delete(self._saved, settings.keep_checkpoints, {p for p in protected if p})
        delete_checkpoints(old)
        self._saved = [path for path in self._saved if path not in old]


@dataclass(frozen=True)
class Saved:
    """A checkpoint a stage reported: where it is and the state it holds."""

    path: str
    state: dict[str, Any]

    def result(self, stage: str) -> StageResult:
        return _result_from_state(stage, self.state, self.path)


def _registered(checkpoints: str) -> list[str]:
    """Checkpoint names the run registered before this process (none for a plain local folder)."""
    try:
        return checkpoint_names(checkpoints)
    except (OSError, ValueError):
        return []


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as checkpoint-safe plain values (numbers and strings)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def _schedule(optimizer: torch.optim.Optimizer, optim: OptimSettings) -> torch.optim.lr_scheduler.MultiStepLR:
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(optim.milestones), gamma=optim.gamma)


def _supernet(settings: StageSettings, model: ModelState | None) -> Supernet:
    torch.manual_seed(settings.seed)  # identical initial weights on every rank
    net = Supernet(settings.supernet)
    if model is not None:
        net.load_state_dict(model)
    return net


def _result_from_state(stage: str, state: dict[str, Any], path: str) -> StageResult:
    """A stage's result from its final checkpoint (also when the marker was never written)."""
    return StageResult(
        stage=stage,
        checkpoint=path,
        best_checkpoint=state.get("best", {}).get("checkpoint"),
        metrics=dict(state.get("metrics", {})),
        genotype=state.get("genotype"),
        history=list(state.get("history", [])),
    )


# --- pretrain ---------------------------------------------------------------------------------
def pretrain(
    ctx: StageContext, s: StageSettings, previous: StageResult | None, model: ModelState | None, resume: Resume
) -> tuple[StageResult, ModelState]:
    """Supernet weights only, on χ1, sandwich {max, min, random, random}, radius 0 (Alg. 1 lines 5-11)."""
    state, _ = resume
    saved: Saved | None = None
    net = prepare(_supernet(s, model).to(ctx.device), s.precision)
    net.set_radius(0.0)
    for p in net.arch_parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(net.weight_parameters(), lr=s.optim.lr)
    scheduler = _schedule(optimizer, s.optim)
    start = _restore(state, net, {"optimizer": optimizer, "scheduler": scheduler})
    loss_fn = ctx.loss(s.optim.loss, s.vgg_weights)
    for epoch in range(start, s.optim.epochs):
        widths_gen = epoch_generator(s.seed, epoch, 0, stream=2)  # same width sandwich on every rank
        losses = []
        batches = ctx.batches(s, "w", epoch, 0, s.optim)
        while all_ranks_agree((batch := next(batches, None)) is not None, ctx.device):
            lr, target, _ = batch
            losses.append(
                pretrain_step(net, optimizer, lr, target, loss_fn, widths_gen, s.optim.grad_clip, s.precision)
            )
        scheduler.step()
        metrics = {"loss": _mean(losses), "lr": optimizer.param_groups[0]["lr"], "steps": len(losses)}
        metrics["weight_rank_spread"] = rank_spread(net.weight_parameters())
        metrics |= ctx.validate(lambda x: net(x, "argmax"), net)
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        saved = ctx.report(s, epoch, metrics, state, None) or saved
    return _finished(s, saved), net.state_dict()


def _finished(s: StageSettings, saved: Saved | None) -> StageResult:
    if saved is None:
        raise RuntimeError(f"stage {s.stage} ran no epoch; a stage reports a checkpoint at its last epoch")
    return saved.result(s.stage)


def _restore(state: dict[str, Any] | None, net: nn.Module, parts: dict[str, Any]) -> int:
    """Load model/optimiser/scheduler state from the resume checkpoint; return the next epoch."""
    if state is None:
        return 0
    net.load_state_dict(state["model"])
    for key, part in parts.items():
        part.load_state_dict(state[key])
    return int(state["epoch"])


# --- search -----------------------------------------------------------------------------------
def search(
    ctx: StageContext, s: StageSettings, previous: StageResult | None, model: ModelState | None, resume: Resume
) -> tuple[StageResult, ModelState]:
    """Alternate architecture steps on χ2 and weight steps on χ1 (Alg. 1 lines 13-24, arch first)."""
    assert s.search is not None
    cfg = s.search
    state, _ = resume
    saved: Saved | None = None
    net = prepare(_supernet(s, model).to(ctx.device), s.precision)
    weight_opt = torch.optim.Adam(net.weight_parameters(), lr=s.optim.lr)
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=0.0)
    scheduler = _schedule(weight_opt, s.optim)
    start = _restore(state, net, {"weight_opt": weight_opt, "arch_opt": arch_opt, "scheduler": scheduler})
    flops = FlopsController(cfg.lambda_flops, cfg.flops_target, cfg.flops_band, cfg.flops_interval)
    if state is not None:
        flops.weight = float(state.get("lambda_flops", flops.weight))
    loss_fn = ctx.loss(s.optim.loss, s.vgg_weights)
    full_paths = net.tree.full_paths.to(ctx.device)
    steps, epochs = s.optim.steps_per_epoch, s.optim.epochs
    for epoch in range(start, epochs):
        widths_gen = epoch_generator(s.seed, epoch, 0, stream=2)
        weight_batches = ctx.batches(s, "w", epoch, 0, s.optim)
        arch_batches = ctx.batches(s, "a", epoch, 1, s.optim)
        lambda_used = flops.weight
        log: dict[str, list[float]] = {"loss_w": [], "loss_a": [], "flops_penalty": [], "order_penalty": []}
        for i in itertools.count():
            pair = next(weight_batches, None), next(arch_batches, None)
            if not all_ranks_agree(None not in pair, ctx.device):
                break
            (lr_w, target_w, _), (lr_a, target_a, _) = pair
            net.set_radius(radius_at(epoch * steps + i, epochs * steps, cfg.radius_start, cfg.radius_end))
            losses = search_step(
                net,
                weight_opt,
                arch_opt,
                (lr_w, target_w),
                (lr_a, target_a),
                loss_fn,
                widths_gen,
                flops=flops,
                lambda_order=cfg.lambda_order,
                full_paths=full_paths,
                grad_clip=s.optim.grad_clip,
                freeze=cfg.ssn_freeze,
                precision=s.precision,
            )
            for key in log:
                log[key].append(getattr(losses, key))
        scheduler.step()
        genotype = net.derive()
        metrics: dict[str, Any] = {key: _mean(values) for key, values in log.items()}
        metrics |= _architecture_metrics(net, genotype) | {"steps": len(log["loss_w"]), "lambda_flops": lambda_used}
        flops.adapt(epoch, metrics["expected_gflops"])
        metrics["arch_rank_spread"] = rank_spread(net.arch_parameters())
        metrics["weight_rank_spread"] = rank_spread(net.weight_parameters())
        metrics |= ctx.validate(lambda x: net(x, "argmax"), net)
        state = {
            "model": net.state_dict(),
            "weight_opt": weight_opt.state_dict(),
            "arch_opt": arch_opt.state_dict(),
            "scheduler": scheduler.state_dict(),
            "lambda_flops": flops.weight,
        }
        saved = ctx.report(s, epoch, metrics, state, genotype) or saved
    return _finished(s, saved), net.state_dict()


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
        **net.frozen_counts(),
    }


# --- train ------------------------------------------------------------------------------------
def train(
    ctx: StageContext, s: StageSettings, previous: StageResult | None, model: ModelState | None, resume: Resume
) -> tuple[StageResult, ModelState]:
    """The derived network alone: content phase, then the optional perceptual fine-tuning phase."""
    assert s.train is not None
    state, _ = resume
    saved: Saved | None = None
    genotype = _train_genotype(s, previous)
    torch.manual_seed(s.seed)
    if state is not None:  # resuming: the architecture alone, the weights come from the checkpoint
        net: nn.Module = build_network(genotype)
        net.load_state_dict(state["model"])
    elif s.train.from_search:
        if model is None:
            raise ValueError("train.from_search needs the search stage's weights; run the search stage first")
        net = inherit(_supernet(s, model), genotype)
    else:
        net = build_network(genotype)
    net = prepare(net.to(ctx.device), s.precision)
    phases = [s.optim] + ([s.train.finetune] if s.train.finetune else [])
    cost = count(genotype)
    resumed_epoch = int(state["epoch"]) if state else 0
    best: dict[str, Any] = dict(state.get("best", {})) if state else {}
    epoch_offset = 0
    for phase_index, phase in enumerate(phases):
        if resumed_epoch >= epoch_offset + phase.epochs:
            epoch_offset += phase.epochs
            continue
        optimizer = torch.optim.Adam(net.parameters(), lr=phase.lr)
        scheduler = _schedule(optimizer, phase)
        if state and state.get("phase") == phase_index:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        loss_fn = ctx.loss(phase.loss, s.vgg_weights)
        for local_epoch in range(max(0, resumed_epoch - epoch_offset), phase.epochs):
            epoch = epoch_offset + local_epoch
            losses = []
            batches = ctx.batches(s, "all", epoch, 0, phase)
            while all_ranks_agree((batch := next(batches, None)) is not None, ctx.device):
                lr, target, _ = batch
                loss = loss_fn(run_forward(net, s.precision, lr), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer_step(optimizer, list(net.parameters()), phase.grad_clip)
                losses.append(float(loss.detach()))
            scheduler.step()
            metrics: dict[str, Any] = {
                "phase": phase.loss,
                "loss": _mean(losses),
                "lr": optimizer.param_groups[0]["lr"],
                "steps": len(losses),
                "params_m": cost.params_m,
                "gflops": cost.gmacs,
            }
            metrics |= ctx.validate(net, net)
            state = {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "phase": phase_index,
            }
            saved = _report_train(ctx, s, epoch, metrics, state, genotype, best) or saved
        epoch_offset += phase.epochs
    return _finished(s, saved), net.state_dict()


def _report_train(
    ctx: StageContext,
    s: StageSettings,
    epoch: int,
    metrics: dict[str, Any],
    state: dict[str, Any],
    genotype: Genotype,
    best: dict[str, Any],
) -> Saved | None:
    """Report a train epoch; track the best-validated checkpoint (kept in the state for resume)."""
    psnr = metrics.get("val_psnr")
    name = checkpoint_name(s.stage, epoch + 1)
    candidate = psnr is not None and (not best or psnr > best["val_psnr"])
    checkpointed = epoch + 1 == s.total_epochs or (epoch + 1) % max(1, s.checkpoint_every) == 0
    if candidate and checkpointed:
        best.update(val_psnr=float(psnr), checkpoint=ctx.io.checkpoint_path(name), epoch=epoch + 1)
    return ctx.report(s, epoch, metrics, state | {"best": dict(best)}, genotype)


def _train_genotype(s: StageSettings, previous: StageResult | None) -> Genotype:
    """The genotype to train: given explicitly, else the one the search derived, or a random one of its cost.

    With `train.random_draw` = k: the k-th random architecture of this seed from the same search space
    whose GFLOPs are within ±`random_tolerance` of the searched one's (`search_space.random_arch`); it
    inherits the same supernet's weights and trains with the same settings as the searched one would.
    """
    assert s.train is not None
    if s.train.genotype is not None:
        searched = s.train.genotype
    elif previous is None or previous.genotype is None:
        raise ValueError("train stage: give stages.train.genotype or run the search stage before it")
    else:
        searched = Genotype.from_dict(previous.genotype)
    if s.train.random_draw is None:
        return searched
    return flops_matched(s.supernet, searched, s.seed, s.train.random_draw, s.train.random_tolerance)


Loop = Callable[[StageContext, StageSettings, StageResult | None, ModelState | None, Resume], tuple[StageResult, Any]]
LOOPS: dict[str, Loop] = {"pretrain": pretrain, "search": search, "train": train}


# --- the run ----------------------------------------------------------------------------------
def _load_model(checkpoint: str) -> ModelState:
    with open_checkpoint(checkpoint) as directory:
        return load_state(directory)["model"]


def run_stages(run: RunSettings, io: StageIO) -> list[StageResult]:
    """Run the stages of `run` in order: skip finished ones, resume the interrupted one."""
    torch.set_num_threads(max(1, run.threads))
    if run.stages[0].deterministic:
        set_deterministic(True)
    ctx = StageContext(run, io)
    resumed_state, resumed_path = io.resumed()
    first = run.stages[0].stage
    previous = None if first == "pretrain" else read_stage_result(run.outputs, _stage_before(first))
    if first != "pretrain" and previous is None:
        raise ValueError(f"stage {first}: the stage before it has not finished under {run.outputs}")
    model: ModelState | None = None  # weights handed from the previous stage in this process
    results = []
    for settings in run.stages:
        done = read_stage_result(run.outputs, settings.stage)
        if done is not None:
            previous, model = done, None
            results.append(done)
            continue
        resume: Resume = (None, None)
        if resumed_state is not None and resumed_state.get("stage") == settings.stage:
            resume = (resumed_state, resumed_path)
        state, path = resume
        ctx.history = list(state.get("history", [])) if state is not None else []
        if state is not None and path is not None and int(state["epoch"]) >= settings.total_epochs:
            result, model = _result_from_state(settings.stage, state, path), state["model"]
        else:
            needs_weights = settings.stage == "search" or (settings.train is not None and settings.train.from_search)
            if state is None and model is None and needs_weights and previous is not None:
                model = _load_model(previous.checkpoint)
            result, model = LOOPS[settings.stage](ctx, settings, previous, model, resume)
        if io.rank == 0:
            write_stage_result(run.outputs, result)
            _publish(run, result)
        previous = result
        results.append(result)
    return results


def _publish(run: RunSettings, result: StageResult) -> None:
    """Store a stage this run computed under its key, so any trial on the storage reuses it (`workers.stage_store`)."""
    if run.store is None or result.stage not in run.store.keys:
        return
    computed_by = run.store.computed_by | {"checkpoints": run.checkpoints}
    publish(run.store.storage, run.store.keys[result.stage], result, computed_by)


def _stage_before(stage: str) -> str:
    order = list(LOOPS)
    return order[order.index(stage) - 1]


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """TorchTrainer entry point: `config["run"]` is the `RunSettings` of this worker group."""
    run: RunSettings = config["run"]
    run_stages(run, RayStageIO(run.checkpoints, run.datasets, run.stages[0].scale))
