"""The HERBS model; knows nothing about Accelerate or the data pipeline."""

__all__ = ["HERBSModel", "build_model", "ensemble_probabilities", "ensemble_scores", "head_logits"]
HOMES = {"build_model": "build"}  # the module of each name not in herbs_model


def __getattr__(name: str):
    # Loaded on first use, so that the command line (which imports herbs.model.commands to build
    # its parser) starts without torch: `herbs task` must install its signal handlers early.
    if name in __all__:
        import importlib

        return getattr(importlib.import_module(f"herbs.model.{HOMES.get(name, 'herbs_model')}"), name)
    raise AttributeError(f"module 'herbs.model' has no attribute {name!r}")
