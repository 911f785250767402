"""herbs: distributed training of HERBS for fine-grained visual classification."""

__version__ = "0.1.0"
