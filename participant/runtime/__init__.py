"""Process plumbing shared by every xatm process (coordinator, agent, services, tools).

One settings loader (``config``), one address type (``address``), one "serve until signalled"
helper (``serving``), one log format (``logs``), the HTTP server (``asgi``), and the checks on
what peers answer (``replies``, ``proto_enum``). Nothing here knows the protocol.
"""
