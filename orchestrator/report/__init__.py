"""Paper-style tables and a Pareto plot of a sweep, read back from MLflow.

Why it looks like this:

* **MLflow is the source of truth.** A sweep's trials may have run on another machine, and Ray
  Tune's own state is not meant to be read back; MLflow holds each trial's tags (axis values,
  derived path) and final metrics (``params_m``, ``gflops``, ``psnr/<set>``). So the report only
  needs a tracking URI, an experiment name and the sweep name, and it queries by our
  ``trilevel.*`` tags through an explicit :class:`mlflow.MlflowClient` (no global MLflow state).
* **Plain data between steps.** :func:`~orchestrator.report.rows.collect` →
  :class:`~orchestrator.report.rows.TrialRow` → :func:`~orchestrator.report.table.table` (a list of
  dicts) → :func:`~orchestrator.report.table.to_markdown` / :func:`~orchestrator.report.table.to_csv`,
  so each step is testable and usable alone; :func:`~orchestrator.report.build.build_report` writes
  the three files and attaches them to the sweep's parent run, where the MLflow UI shows them beside
  the runs they summarise.

One job per module:

* :mod:`~orchestrator.report.runs`: finding a sweep's runs in MLflow by our tags, and their UI page;
* :mod:`~orchestrator.report.rows`: the trials as :class:`~orchestrator.report.rows.TrialRow`, in grid
  order, with the baselines they measured and the best of them;
* :mod:`~orchestrator.report.table`: the paper's table (display strings), as Markdown or CSV;
* :mod:`~orchestrator.report.pareto`: the PSNR-vs-GFLOPs plot with its Pareto front;
* :mod:`~orchestrator.report.build`: everything at once, written to files and logged to the sweep's run.

The modules log under ``orchestrator.report``.
"""

__all__: list[str] = []
