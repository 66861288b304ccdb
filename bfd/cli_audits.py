"""The ``bfd`` commands of audits as events: the options of series and drift, their report,
``bfd audit-checkpoints`` and ``bfd serve`` (``bfd audit`` itself is in ``bfd.cli``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bfd import cli


def audit_config(config: dict):
    """The typed audit config, its errors naming the command's options (``--n-images``)."""
    from pydantic import ValidationError

    from bfd.flows.params import AuditConfig, describe_errors

    try:
        return AuditConfig(**{**config, "sites": list(config.get("sites", ()))})
    except ValidationError as err:
        raise ValueError(describe_errors(err, cli=True)) from None


def add_audit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series", help="the series this audit extends (default: the model and its "
                   "weights' source, e.g. vit_b@pretrained, test_vit@random-seed-0)")
    p.add_argument("--drift-threshold", action="append", default=[], metavar="[METRIC=]VALUE",
                   help="flag a change since the previous audit larger than VALUE (default "
                   "0.05 for fractions); METRIC=VALUE sets one metric's (frac_pos, f_cc, "
                   "head_type, ...); repeatable")
    p.add_argument("--fail-on-drift", action="store_true",
                   help="exit with status 3 when any drift is flagged (for CI gates)")
    p.add_argument("--no-dashboard", action="store_true",
                   help="do not rebuild <store>/dashboard after the audit")


def drift_thresholds(items: Sequence[str]):
    from bfd.flows.params import DriftThresholds

    out: dict = {"metrics": {}}
    for item in items:
        key, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--drift-threshold must be VALUE or METRIC=VALUE with a number; "
                             f"got {item!r}") from None
        if not sep:
            out["fraction"] = number
        elif key == "head_type":
            out["head_type"] = number
        else:
            out["metrics"][key] = number
    return DriftThresholds(**out)


def print_audit(out: dict, store: str) -> int:
    """The audit's line and its flagged drift; returns the number of flagged values."""
    from bfd.queries import run_query

    prev = out["prev_audit_id"]
    print(f"audit {out['audit_id']} of series {out['series']} (step {out['step']}): run "
          f"{out['run_id']} {'reused, nothing recomputed' if out['reused'] else 'computed'}")
    if prev is None:
        print("drift: first audit of this series, nothing to compare with")
        return 0
    print(f"drift: {out['n_flagged']} value(s) flagged against audit {prev}")
    if out["n_flagged"]:
        drift = run_query(store, "drift", {"series": out["series"],
                                           "audit_id": out["audit_id"]})
        flagged = drift.filter(drift.column("flagged"))
        columns = ["layer", "head", "metric", "before", "after", "delta", "threshold"]
        cli._print_table(flagged.select(columns), "table")
    return out["n_flagged"]


def drift_exit(n_flagged: int, fail_on_drift: bool) -> int:
    if n_flagged and fail_on_drift:
        print(f"bfd: drift: {n_flagged} value(s) flagged (--fail-on-drift)", file=sys.stderr)
        return 3
    return 0


def cmd_audit_checkpoints(args: argparse.Namespace) -> int:
    from bfd.flows.checkpoints import audit_checkpoints

    if args.weights != "pretrained":
        raise ValueError("--weights: audit-checkpoints audits the weights of each checkpoint "
                         f"file of {args.checkpoints!r}; drop --weights")
    config = audit_config({**cli._extract_config(args), "weights": "random"})
    thresholds = drift_thresholds(args.drift_threshold)
    store = cli._store(args)
    config = config.model_dump(exclude={"weights"})
    out = cli._with_bars(audit_checkpoints, args.checkpoints, config, store,
                         series=args.series, drift=thresholds, dashboard=not args.no_dashboard)
    if not out["audits"]:
        print(f"nothing to do: every checkpoint of {args.checkpoints} ({out['n_files']} files) "
              f"is already audited in series {out['series']}")
        return 0
    n_flagged = 0
    for one in out["audits"]:
        print(f"{one['checkpoint']}:")
        n_flagged += print_audit(one, store)
    print(f"\n{len(out['audits'])} checkpoint(s) audited in series {out['series']}; "
          f"{out['n_files'] - len(out['audits'])} already audited; store {store}")
    return drift_exit(n_flagged, args.fail_on_drift)


def cmd_serve(args: argparse.Namespace) -> int:
    from bfd.flows.serve import serve

    serve(args.file)
    return 0


def add_audit_parsers(sub) -> None:
    """The subcommands ``audit-checkpoints`` and ``serve``."""
    s = sub.add_parser("audit-checkpoints", help="audit every checkpoint of a folder or glob "
                       "not yet audited in its series, in step order")
    s.add_argument("checkpoints", help="a folder of checkpoint files or a glob")
    cli._add_extract_options(s)
    add_audit_options(s)
    s.set_defaults(fn=cmd_audit_checkpoints)

    s = sub.add_parser("serve", help="run the deployments of prefect.yaml on their schedules "
                       "in this process (no server or worker to set up)")
    s.add_argument("--file", default="prefect.yaml", help="the deployments file")
    s.set_defaults(fn=cmd_serve)

