"""The options of a decomposition, checked without torch: an audit of an already computed
run compares them with the stored ones (``bfd.tasks.audits.computed_run``) without loading
the pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from bfd.core.sampling import DEFAULT_CI_TARGET, DEFAULT_GROUPS, stored_groups
from bfd.requests import check_device


@dataclass(frozen=True)
class DecomposeOptions:
    """The docs/method.md options of a decomposition; recorded with its results.

    Attributes:
        prefix: "exclude" (default) or "include" the CLS/register tokens as positions.
        seed: seed of the split-half and shuffle controls.
        compute_dtype: dtype of the pass-2 projection ("float32" or "float64").
        images_per_task: images per dask task (None: the stored chunks).
        check_images: images that get the 9-block logit reconstruction check.
        device: where both passes run: "cpu", "cuda", "cuda:K", or "auto" (CUDA when the
            process running the (site, layer) task sees one; on a ``--dask-address`` cluster
            the CPU, since the chunks run on workers that may have no GPU).
        jackknife_groups: image groups G of the interval jackknife (0: no intervals).
        ci_target: interval half-width the main shares should reach.
    """

    prefix: str = "exclude"
    seed: int = 0
    compute_dtype: str = "float32"
    images_per_task: int | None = None
    check_images: int = 2
    device: str = "auto"
    jackknife_groups: int = DEFAULT_GROUPS
    ci_target: float = DEFAULT_CI_TARGET

    def __post_init__(self) -> None:
        # refused here, before any task runs, rather than in the first chunk of pass 1
        stored_groups(self.jackknife_groups)
        if not (isinstance(self.ci_target, int | float) and self.ci_target > 0):
            raise ValueError(f"ci_target must be a number > 0; got {self.ci_target!r}")
        if self.prefix not in ("exclude", "include"):
            raise ValueError(f"prefix must be exclude or include; got {self.prefix!r}")
        if self.compute_dtype not in ("float32", "float64"):
            raise ValueError(f"compute_dtype must be float32 or float64; got "
                             f"{self.compute_dtype!r}")
        if self.images_per_task is not None and self.images_per_task < 1:
            raise ValueError(f"images_per_task must be a positive integer (or unset: the stored "
                             f"chunks); got {self.images_per_task}")
        try:
            check_device(self.device)
        except ValueError as err:
            raise ValueError(f"device {err}; got {self.device!r}") from None
        if self.device not in ("auto", "cpu"):  # whether CUDA is there: torch's to say
            from bfd.models import resolve_device

            resolve_device(self.device)

    def to_dict(self) -> dict:
        return asdict(self)


def changed_from_defaults(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options of ``options`` that change results (``RESULT_FLAGS``) and are not the
    defaults, by name; None (an audit that did not keep its options: it had the defaults)
    gives none."""
    from bfd.storage.republish import changed_result_options

    return changed_result_options(dict(options or {}), DecomposeOptions().to_dict())


def flags_of(options: Mapping[str, Any] | None) -> str:
    """``changed_from_defaults`` as the ``bfd decompose`` flags that give them, as typed:
    ``--control-seed 3 --prefix include``; "" when none does (``result_flags``)."""
    from bfd.storage.republish import result_flags

    return result_flags(dict(options or {}), DecomposeOptions().to_dict())


def not_decomposable(store, run_id: str, options: DecomposeOptions) -> str | None:
    """Why ``bfd decompose`` of the run with ``options`` has nothing to read, in one line
    with what the user can do: a stats-only run (``bfd.storage.stats_only_not_decomposed``)
    or one whose activations ``bfd drop-activations`` removed; None otherwise. Read without
    torch or Prefect: ``bfd decompose`` refuses before they start, the flow ``decompose``
    for a run submitted to it.

    Args:
        store: The store (``bfd.storage.Store``).

    Raises:
        FileNotFoundError: No such run (named with the closest ones).
    """
    from bfd.storage import (
        dropped,
        is_stats_only,
        read_request,
        repair_command,
        stats_only_not_decomposed,
    )

    if is_stats_only(read_request(store, run_id).extra):
        return stats_only_not_decomposed(store, run_id, flags_of(options.to_dict()))
    if dropped(store, run_id) is not None:
        return (f"run {run_id}'s activations were dropped (bfd drop-activations); "
                f"{repair_command(store, run_id)} extracts them again, then decompose it "
                "(bfd audit of its request does both)")
    return None
