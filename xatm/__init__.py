"""xatm: an XA transaction manager for microservices.

``xatm.participant`` is the SDK services link (initiator, participant stub, resource managers);
``xatm.coordinator`` is the server that drives two-phase commit. In the source tree they live in
the top-level ``participant/`` and ``coordinator/`` folders (this package links them).
"""
