"""The one place the package version is written (``igds.__version__`` re-exports it)."""

__version__ = "0.1.0"
