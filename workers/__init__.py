"""What runs inside Ray Train workers and Ray Data: pipelines, stage loops, losses, metrics."""

__all__: list[str] = []
