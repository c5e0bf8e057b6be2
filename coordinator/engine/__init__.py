"""The coordinator engine: transactions in memory, driven by the protocol, logged before they act.

``Engine`` is the one object the servers talk to; ``peers`` calls participants; ``recovery``
finishes what a previous run left in doubt.
"""

from xatm.coordinator.engine.core import Engine

__all__ = ["Engine"]
