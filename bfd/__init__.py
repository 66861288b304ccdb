"""vit-bfd: Bi-orthogonal Factor Decomposition of timm Vision Transformers.

``bfd.analyze`` is the one-call in-memory API; the pipeline lives in ``bfd.flows`` and the
``bfd`` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vit-bfd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    # ``import bfd`` stays light (the CLI starts fast); torch loads on first use of analyze.
    if name == "analyze":
        from bfd.api import analyze

        return analyze
    raise AttributeError(f"module 'bfd' has no attribute {name!r}")


__all__ = ["analyze", "__version__"]
