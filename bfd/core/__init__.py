"""Pure math of docs/method.md: numpy/torch in, arrays out. No Prefect, Zarr or DuckDB here.

Names load on first use, so that a torch-free module of the core (``bfd.core.sampling``) can
be imported without torch.
"""

from __future__ import annotations

from typing import Final

from bfd.lazy import lazy_exports

# name -> the module of this package that defines it
_EXPORTS: Final[dict[str, str]] = {
    "Means": "anova",
    "Pass1State": "anova",
    "finalize_means": "anova",
    "Pass2Plan": "content",
    "Pass2State": "content",
    "logit_residual": "content",
    "to_dataset": "dataset",
    "HeadMaps": "heads",
    "Modes": "heads",
    "bi_orthogonal_modes": "heads",
    "head_maps": "heads",
    "decompose_layer": "stream",
    "pass1_chunk": "stream",
    "prepare_chunk": "stream",
    "BLOCKS": "summary",
    "HEAD_TYPES": "summary",
    "UNDEFINED": "summary",
    "LayerResult": "summary",
    "RESULTS_METHOD": "method",
    "method_of": "method",
    "pos_embed_cosine": "summary",
    "summarize": "summary",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
