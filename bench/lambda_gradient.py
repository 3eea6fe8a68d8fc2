"""How large is λ_order next to the architecture loss's own gradient on each path logit? (docs/method.md)

The ordering penalty's gradient on a path logit γₙ is exactly λ times the number of full root→leaf
paths ending at n, minus λ times those starting at n (the root): a constant. Whether λ can change
the derived path depends on how that compares with the task loss's gradient on the same logits
over the search. This runs pretrain and search of ``table8 --scale small`` at λ_order = 0 (backbone
A; ``--cells`` sets num_cells) in this process, then at every search epoch's checkpoint measures,
over a few χ₂ batches, the sandwich loss's gradient per eligible output node at that epoch's
radius, and prints it beside λ's. Research, not a speed benchmark: not part of ``make bench``.

    python bench/lambda_gradient.py --cells 2 --batches 4
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import torch

from orchestrator.experiment import load_experiment, trials
from orchestrator.plan import plan_trial, resolve_data
from orchestrator.train_run import local_io
from search_space.supernet import Supernet
from workers.batches import patch_batches
from workers.checkpointing import load_state
from workers.losses import content_loss
from workers.pipeline import worker_rows
from workers.search_step import SEARCH_FIXED_WIDTHS, frozen, sandwich_backward
from workers.stages import run_stages


def _task_gradient(net: Supernet, rows: list, patch: int, batches: int, seed: int) -> torch.Tensor:
    """Mean over `batches` χ₂ batches of ∂(sandwich loss)/∂γ, the arch step's loss without penalties."""
    generator = torch.Generator().manual_seed(seed)
    widths_gen = torch.Generator().manual_seed(seed + 1)
    total = torch.zeros_like(net.path_logits)
    for lr, hr in patch_batches(
        rows, batch_size=3, patch=patch, scale=4, generator=generator, steps=batches, name="chi2"
    ):
        net.zero_grad(set_to_none=True)
        with frozen(net.weight_parameters()):
            gumbel = net.sample_widths("gumbel", widths_gen)
            sandwich_backward(net, lr, hr, (gumbel, *SEARCH_FIXED_WIDTHS), content_loss, None)
        total += net.path_logits.grad.detach()
    return total / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=2)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="another FIELD=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(max(1, args.threads))
    storage = tempfile.mkdtemp(prefix="lambda-gradient-")
    overrides = ["sweep={}", "stages.search.lambda_order=0.0", f"search_space.num_cells={args.cells}", *args.overrides]
    experiment = load_experiment("table8", "small", overrides, storage=storage)
    (trial,) = trials(experiment)
    plan = plan_trial(trial, resolve_data(experiment, storage), storage, "lambda-gradient")
    (run,) = plan.runs
    settings = dataclasses.replace(run.settings, stages=run.settings.stages[:2])  # pretrain and search
    io = local_io(run, 4)
    run_stages(settings, io)
    search = settings.stages[1]
    net = Supernet(search.supernet)
    tree, mask = net.tree, net.output_mask
    leaves = tree.full_paths[:, -1].tolist()
    eligible = [n.index for n in tree.nodes if bool(mask[n.index])]
    rows = worker_rows(run.settings.datasets[search.datasets["a"]].path, 4, "a")  # χ₂, as the arch step reads
    print(
        f"table8 small, backbone A, {args.cells} cells: eligible output nodes {len(eligible)}, full paths {len(leaves)}"
    )
    print(
        "| epoch | radius | node (path) | ∂L/∂γ (task, mean over batches) | ordering gradient λ="
        + ", ".join(f"{lam:g}" for lam in args.lambdas)
        + " |"
    )
    print("|---|---|---|---|---|")
    checkpoints = [r.checkpoint for r in io.reports if r.metrics.get("stage") == "search" and r.checkpoint]
    for epoch, checkpoint in enumerate(checkpoints, start=1):
        state = load_state(checkpoint)["model"]
        net.load_state_dict(state)
        radius = float(net.radius)
        grad = _task_gradient(net, rows, search.patch, args.batches, seed=epoch)
        for node in eligible:
            order = [lam * leaves.count(node) - (lam * len(leaves) if node == 0 else 0.0) for lam in args.lambdas]
            print(
                f"| {epoch} | {radius:.2f} | {list(tree.nodes[node].path)} | {float(grad[node]):+.2e} | "
                + ", ".join(f"{o:+.2e}" for o in order)
                + " |"
            )


if __name__ == "__main__":
    main()
