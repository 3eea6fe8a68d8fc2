"""Use a trained network: load it from wherever a trial left it, and upscale images with it.

One job per module:

* :mod:`~orchestrator.upscale.model_source`: a model source (checkpoint directory, MLflow run,
  ``best:<sweep>``, registered model) → the trained network and its scale;
* :mod:`~orchestrator.upscale.tiled`: tiled inference on tensors and images, and the device to run on;
* :mod:`~orchestrator.upscale.files`: image files and folders in, ``<stem>_x<scale>.png`` files out;
* :mod:`~orchestrator.upscale.errors`: :class:`~orchestrator.upscale.errors.UpscaleError`, what they all raise.
"""

__all__: list[str] = []
