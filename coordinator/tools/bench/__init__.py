"""``xatm bench``: the coordinator measured beside its baselines, in one run.

Modules: ``cli`` (the command line and its presets), ``suite`` (the sections, in order),
``load`` (the shared load generator), ``runs`` (coordinator runs and their counters), ``echo``
(the gRPC ceiling), ``wire`` (messages counted at the harness's ends), ``footprint`` (memory,
replay), ``postgresql`` and ``replicas`` (the optional comparisons), ``measure`` (what is read
off processes), ``report`` (the table), ``participant`` (the in-memory participant process).
"""

from xatm.coordinator.tools.bench.cli import add_parser
from xatm.coordinator.tools.bench.report import render_table

__all__ = ["add_parser", "render_table"]
