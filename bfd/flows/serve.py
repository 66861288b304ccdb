"""``bfd serve``: the deployments of ``prefect.yaml`` with their schedules and parameters,
served from this process (``prefect.serve``): no work pool or worker to set up."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

_SCHEDULE_KEYS = ("cron", "interval", "rrule", "timezone", "anchor_date", "active", "parameters")


def _load_flow(entrypoint: str, root: Path):
    """The flow object of ``path/to/module.py:name``, imported as a module of the package."""
    path, _, name = entrypoint.partition(":")
    module = ".".join(Path(path).with_suffix("").parts)
    if not (root / path).is_file():
        raise FileNotFoundError(f"entrypoint {entrypoint!r}: no file {root / path}")
    return getattr(importlib.import_module(module), name)


def _schedule(spec: dict[str, Any]):
    from prefect.schedules import Cron, Interval, RRule

    spec = {k: v for k, v in spec.items() if k in _SCHEDULE_KEYS}
    common = {k: spec[k] for k in ("timezone", "active", "parameters") if k in spec}
    if "cron" in spec:
        return Cron(spec["cron"], **common)
    if "interval" in spec:
        anchor = {"anchor_date": spec["anchor_date"]} if "anchor_date" in spec else {}
        return Interval(spec["interval"], **anchor, **common)
    if "rrule" in spec:
        return RRule(spec["rrule"], **common)
    raise ValueError(f"schedule {spec}: expected cron, interval or rrule")


def _check_parameters(flow, parameters: dict[str, Any], where: str) -> None:
    """The flow's own validation of a deployment's parameters, said in one line before
    anything is registered (the server's answer was the whole schema, 16 kB on one line).
    A missing parameter is not refused: a run may still give it.

    Raises:
        ValueError: A parameter the flow does not take or of the wrong type.
    """
    from prefect.exceptions import ParameterTypeError

    try:
        flow.validate_parameters(parameters)
    except ParameterTypeError as e:
        problems = [line.strip()[2:] for line in str(e).splitlines()
                    if line.strip().startswith("- ") and "Field required" not in line]
        if problems:
            raise ValueError(f"{where}: invalid parameters: {'; '.join(problems)}") from None


def runner_deployments(prefect_file: str | Path = "prefect.yaml") -> list:
    """One ``RunnerDeployment`` per deployment of the file: the same name, flow, parameters,
    tags, description and schedules.

    Raises:
        FileNotFoundError: No such file or entrypoint.
        ValueError: Not YAML, or no deployment with a name and an entrypoint.
    """
    path = Path(prefect_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such deployments file; expected a prefect.yaml")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(f"{path}: not a YAML deployments file{line}: "
                         f"{getattr(e, 'problem', None) or e}") from None
    deployments = spec.get("deployments") if isinstance(spec, dict) else None
    if not deployments or not isinstance(deployments, list):
        raise ValueError(f"{path}: no deployments to serve (expected a 'deployments:' list, "
                         "as in the project's prefect.yaml)")
    out = []
    for k, dep in enumerate(deployments):
        if not isinstance(dep, dict) or not dep.get("name") or not dep.get("entrypoint"):
            raise ValueError(f"{path}: deployment {k + 1} needs a name and an entrypoint")
        flow = _load_flow(dep["entrypoint"], path.parent)
        for spec in [{}, *(dep.get("schedules") or [])]:
            _check_parameters(flow, {**(dep.get("parameters") or {}),
                                     **(spec.get("parameters") or {})}, f"{path}: {dep['name']}")
        out.append(flow.to_deployment(
            name=dep["name"], parameters=dep.get("parameters") or {},
            tags=dep.get("tags") or [], description=dep.get("description"),
            schedules=[_schedule(s) for s in dep.get("schedules") or []]))
    return out


def serve(prefect_file: str | Path = "prefect.yaml") -> None:
    """Serve every deployment of the file until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*runner_deployments(prefect_file))
