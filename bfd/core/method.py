"""The version of the method that computes a run's published results.

``RESULTS_METHOD`` is one integer: bump it when a published statistic's definition or
estimator changes (a column's meaning, its interval's estimator, how a type is called), so
that results published before are told apart from those the installed bfd computes. Every
publish records it (``runs/<run_id>/published.json``'s ``method`` and the ``runs`` table's
``method`` column); an audit reuses a run as computed only when its results are of this
method, and otherwise decomposes it again from its stored activations (docs/layout.md,
"Method versions").

History:

- 1: results published before bfd recorded its method (a pointer without ``method``, a
  ``runs`` file without the column, or a store of the layout before versioned publishing).
  They include the jackknife that kept the full sample's centring in a replicate's E_cc
  (``f_*_se`` of raw shares up to 22-28 % too small, ``head_type_stability`` too high near a
  class boundary) and modes past a head's numerical rank typed by their rounding noise; a
  run published shortly before the method was recorded may already hold method 2's figures,
  which nothing recorded: it is computed again once.
- 2: a replicate's E_cc re-centred on the replicate's own means (commit 0963f11); modes of
  sigma at rounding level typed ``undefined``, without alpha or beta (9735537, 7cdce81).
  Point shares (``f_*``, ``frac_*``, their ``_adj``) and head types are those of method 1:
  what drift compares did not change.

Standard library only: the reading commands import it without torch.
"""

from __future__ import annotations

from typing import Final

RESULTS_METHOD: Final[int] = 2
# What a publish recorded before methods were kept reads as.
UNRECORDED_METHOD: Final[int] = 1


def method_of(recorded: object) -> int:
    """The method a publish's record names (its ``method`` value, None when it has none):
    ``UNRECORDED_METHOD`` for none, or for a value that is no positive integer."""
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
        return recorded
    return UNRECORDED_METHOD
