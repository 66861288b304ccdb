"""The limit above which the check against the model (``layers.model_logit_residual``,
``model_attn_residual``: docs/checks.md) is a failure, and the one line that says so.

No torch here: the read-only commands, the SQL views and the dashboard use it too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

# Correct head maps give about 1e-6 (up to 1e-5 where the qkv biases dominate the bilinear
# part), the attention-output check about 1e-7; each wrong M of tests/test_model_check.py
# gives more than 1e-2 and a wrong scale order 1. 1e-3 lies a hundred times above the first
# and ten times below the second (docs/checks.md).
MODEL_CHECK_LIMIT: Final[float] = 1e-3

MODEL_CHECKS: Final[tuple[str, ...]] = ("model_logit_residual", "model_attn_residual")


def _value(row: Mapping[str, Any], name: str) -> float | None:
    v = row.get(name)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def model_check_warning(run_id: str, rows: Iterable[Mapping[str, Any]],
                        limit: float = MODEL_CHECK_LIMIT) -> str | None:
    """One line when a check of ``rows`` (``layers`` rows of the run: ``site``, ``layer`` and
    the ``MODEL_CHECKS`` columns) exceeds ``limit``, naming the run, the worst (site, layer)
    and value of each failed check and how many layers failed; None when every check passed
    or none was computed (NULL at the resid site and for runs extracted before the check).
    A value that is not finite (inf) fails too."""
    rows = list(rows)
    said = []
    for name in MODEL_CHECKS:
        failed = [(v, r) for r in rows if (v := _value(r, name)) is not None and v > limit]
        if not failed:
            continue
        value, worst = max(failed, key=lambda f: f[0])
        checked = sum(_value(r, name) is not None for r in rows)
        said.append(f"{name} {value:.3g} at {worst.get('site')} layer {worst.get('layer')} "
                    f"({len(failed)} of {checked} layer(s) above {limit:g})")
    if not said:
        return None
    return (f"warning: run {run_id} fails the check against the model: {'; '.join(said)}; a "
            "correct decomposition gives about 1e-6, so its logits are not the model's x M xᵀ "
            "and its shares may be wrong (docs/checks.md)")
