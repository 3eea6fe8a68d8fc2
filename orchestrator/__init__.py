"""The Ray driver: experiments, trials, sweeps, MLflow tracking, reports and the CLI.

The Python API (`orchestrator.api`) is importable from here: `import orchestrator as trilevel;
trilevel.run(trilevel.load_experiment("table8"))`. It is loaded at first use, so importing a
submodule (`orchestrator.experiment`, in every Ray worker) does not pull in Tune, MLflow and pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.api import Experiment, ExperimentError, SweepResult, load_experiment, open_results, run

__all__ = ["Experiment", "ExperimentError", "SweepResult", "load_experiment", "open_results", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import orchestrator.api

        return getattr(orchestrator.api, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
