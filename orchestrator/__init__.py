"""The Ray driver: experiments, trials, sweeps, MLflow tracking, reports and the CLI."""

__all__: list[str] = []
