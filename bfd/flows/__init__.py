"""Prefect flows, the entrypoints of prefect.yaml: extract, decompose and audit."""

import os

# Offline defaults for flows run from Python (a notebook, a deployment's worker), as the bfd
# command sets them before it imports Prefect (bfd.cli._prefect_defaults), unless set: no
# usage telemetry reaching for the network (trial 29: a notebook's audit() offline logged
# "Failed to send telemetry" from its temporary Prefect server).
for _name, _value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1"),
                      ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_name, _value)
