"""prag_core: model loading, injection, parametrization, retrieval, pipeline, CLI."""
__version__ = "0.1.0"

from .model import load_model  # noqa: E402

__all__ = ["__version__", "load_model"]
