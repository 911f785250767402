"""The HERBS model; knows nothing about Accelerate or the data pipeline."""

__all__ = ["HERBSModel", "ensemble_scores", "head_logits"]


def __getattr__(name: str):
    # Loaded on first use, so that the command line (which imports herbs.model.commands to build
    # its parser) starts without torch: `herbs task` must install its signal handlers early.
    if name in __all__:
        from herbs.model import herbs_model

        return getattr(herbs_model, name)
    raise AttributeError(f"module 'herbs.model' has no attribute {name!r}")
