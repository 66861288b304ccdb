"""vit-bfd: Bi-orthogonal Factor Decomposition of timm Vision Transformers.

``bfd.analyze`` is the one-call in-memory API; the pipeline lives in ``bfd.flows`` and the
``bfd`` command.
"""


def __getattr__(name: str):
    # ``import bfd`` stays light (the CLI starts fast): torch loads on first use of analyze,
    # importlib.metadata (tens of ms) on first use of __version__.
    if name == "analyze":
        from bfd.api import analyze

        return analyze
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("vit-bfd")
        except PackageNotFoundError:  # running from a source tree that was never installed
            value = "0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module 'bfd' has no attribute {name!r}")


__all__ = ["analyze", "__version__"]


def __dir__() -> list[str]:
    # the names served on first use above, for dir() and a notebook's completion (trial 29)
    return sorted({*globals(), *__all__})
