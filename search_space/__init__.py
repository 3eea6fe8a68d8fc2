"""Trilevel search space for efficient SR: supernet, ops, combiners, cost model, genotypes.

Pure PyTorch: importing this package never imports Ray or MLflow.
"""

__all__: list[str] = []
