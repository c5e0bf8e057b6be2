"""OpenTelemetry spans for the XA protocol: begin, enlist, prepare, commit and rollback.

Off by default. ``XATM_TRACING=1`` in a process's environment (or ``enable()``) switches it on,
which needs the ``otel`` extra (opentelemetry-api and -sdk); spans then go to the process's
global tracer provider, configured as OpenTelemetry documents (an exporter, a resource). When
off, every hook is a check of one module global and returns shared no-op objects: no import of
OpenTelemetry, no allocation per call.

Spans are linked across processes by the W3C ``traceparent`` (and ``tracestate``) gRPC
metadata: ``inject()`` gives the pairs for an outgoing call, ``span(..., metadata=...)`` starts
a span as the child of an incoming call's. Attributes: ``xatm.gtrid``, ``xatm.bqual``,
``xatm.rm_id``, ``xatm.xa_code`` and, on an operator's forced action, ``xatm.operator_trace_id``
(the trace id of the admin request and its audit record).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["ENV", "SpanNotes", "disable", "enable", "enabled", "incoming", "inject", "served", "span"]

log = logging.getLogger(__name__)

#: The environment variable that switches tracing on in a process ("1", "true", "on", "otel").
ENV = "XATM_TRACING"
_KEYS = ("traceparent", "tracestate")


class SpanNotes:
    """What a ``span`` block may add to its span once it knows more (e.g. the XA code answered)."""

    def __init__(self, span: Any = None):
        self._span = span

    def note(self, **attributes: str | int | bool | None) -> None:
        """Set ``xatm.<name>`` attributes; None values are left out."""
        if self._span is not None:
            for name, value in attributes.items():
                if value is not None and value != "":
                    self._span.set_attribute(f"xatm.{name}", value)


_NOTHING = SpanNotes()
_OFF = contextlib.nullcontext(_NOTHING)
_tracer: Any = None
_propagator: Any = None


def enable(provider: Any = None) -> None:
    """Trace from now on, to ``provider`` (an SDK TracerProvider) or the global one.

    Raises ModuleNotFoundError naming the extra when OpenTelemetry is not installed.
    """
    global _tracer, _propagator
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ModuleNotFoundError:
        raise ModuleNotFoundError("tracing needs OpenTelemetry: pip install 'xatm[otel]'") from None
    _tracer = trace.get_tracer("xatm", tracer_provider=provider)
    _propagator = TraceContextTextMapPropagator()


def disable() -> None:
    global _tracer, _propagator
    _tracer = _propagator = None


def enabled() -> bool:
    return _tracer is not None


def inject() -> tuple[tuple[str, str], ...]:
    """``traceparent``/``tracestate`` metadata pairs of the current span; () when off or none."""
    if _tracer is None:
        return ()
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return tuple(carrier.items())


def span(
    name: str,
    metadata: Iterable[tuple[str, str | bytes]] | None = None,
    **attributes: str | int | bool | None,
) -> contextlib.AbstractContextManager[SpanNotes]:
    """A span named ``name`` around the block, current inside it (so calls made there carry it).

    ``metadata``: an incoming call's metadata; the span is the child of the trace it names, if
    any (else of the current span). ``attributes`` become ``xatm.<name>`` (None left out).
    """
    if _tracer is None:
        return _OFF
    return _started(name, metadata, attributes)


def incoming(
    name: str, context: Any, **attributes: str | int | bool | None
) -> contextlib.AbstractContextManager[SpanNotes]:
    """``span`` as the child of the trace a served gRPC call's metadata names (``context`` is its
    ServicerContext, read only when tracing is on)."""
    if _tracer is None:
        return _OFF
    return _started(name, context.invocation_metadata(), attributes)


def served(name: str, context: Any, request: Any) -> contextlib.AbstractContextManager[SpanNotes]:
    """``incoming`` for an XA call: the gtrid, bqual and rm_id come from ``request`` (its ``xid``
    or its own fields), read only when tracing is on."""
    if _tracer is None:
        return _OFF
    xid = getattr(request, "xid", request)
    ids = {key: getattr(xid, key, None) or getattr(request, key, None) for key in ("gtrid", "bqual")}
    return _started(name, context.invocation_metadata(), {**ids, "rm_id": getattr(request, "rm_id", None)})


@contextlib.contextmanager
def _started(
    name: str, metadata: Iterable[tuple[str, str | bytes]] | None, attributes: dict[str, Any]
) -> Iterator[SpanNotes]:
    parent = None
    if metadata is not None:
        carrier = {k: v if isinstance(v, str) else v.decode() for k, v in metadata if k in _KEYS}
        if carrier:
            parent = _propagator.extract(carrier)
    with _tracer.start_as_current_span(name, context=parent) as current:
        notes = SpanNotes(current)
        notes.note(**attributes)
        yield notes


if os.environ.get(ENV, "").strip().lower() in ("1", "true", "on", "otel"):
    try:
        enable()
    except ModuleNotFoundError as err:
        log.error("%s is set but tracing stays off: %s", ENV, err)
