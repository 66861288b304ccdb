"""The dashboard, the figures for papers, and the figure functions of the named queries.

Names load on first use, so that ``bfd dashboard`` (plotly.js in the browser) does not import
matplotlib, and ``bfd plot`` does not read the dashboard's assets.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_dashboard": "bfd.report.dashboard",
    "serve_dashboard": "bfd.report.dashboard",
    "plot_run": "bfd.report.plots",
    "compare_figure": "bfd.report.figures",
    "depth_overview_figure": "bfd.report.figures",
    "head_map_figure": "bfd.report.figures",
    "layer_profile_figure": "bfd.report.figures",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bfd.report' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
