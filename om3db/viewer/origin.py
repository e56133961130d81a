"""Who may open the viewer's WebSocket: the page it serves, not any web page the user happens to visit.

A server on 127.0.0.1 is still reachable from every page in the user's browser: a foreign page can open
``ws://127.0.0.1:PORT`` and would be sent the scans, the point clouds and the search results. Browsers
send ``Origin`` with every WebSocket handshake and pages cannot forge it, so a connection is accepted
when it has no ``Origin`` (not a browser: a local program, which could read the database anyway) or
when its ``Origin`` is the address it connected to (``Host``). For a server bound to a loopback or
named address, ``Host`` must also be a loopback name or that address: a foreign page whose own name
resolves to 127.0.0.1 (DNS rebinding) is same-origin with itself, but its ``Host`` gives it away.

viser has no hook for the handshake, so `guard` registers a first connect callback on viser's
WebSocket server that closes a refused connection (code 1008) before any message is sent to it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["guard", "origin_problem"]

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})


def _hostname(netloc: str) -> str | None:
    try:
        return urlsplit(f"//{netloc}").hostname
    except ValueError:
        return None


def origin_problem(headers, bind_host: str) -> str | None:
    """Why a WebSocket handshake with these HTTP headers is refused, or None when it is accepted."""
    origin = headers.get("Origin")
    if origin is None:
        return None
    host = (headers.get("Host") or "").strip().lower()
    parts = urlsplit(origin.strip().lower()) if origin.strip().lower() != "null" else None
    if parts is None or parts.scheme not in ("http", "https") or not host or parts.netloc != host:
        return f"origin {origin!r} is not this viewer's page ({host or 'no Host'})"
    name = _hostname(host)
    allowed = LOOPBACK | {bind_host.lower().strip("[]")}
    if bind_host not in ANY_ADDRESS and name not in allowed:
        return f"host {host!r} is not an address this viewer serves"
    return None


def guard(server, bind_host: str, refused: list[str]) -> None:
    """Refuse foreign WebSocket clients of a ``viser.ViserServer``; each refusal's reason is appended to
    ``refused``. Connections made before the guard was installed are checked too."""
    ws = server._websock_server  # viser's infra server: the only place the handshake's headers are seen
    live = ws._live_connections

    async def check(client) -> None:
        conn = live.get(client.client_id)
        if conn is None or conn.request is None:
            return
        reason = origin_problem(conn.request.headers, bind_host)
        if reason is not None:
            refused.append(reason)
            await conn.close(1008, "om3db viewer: " + reason[:100])

    ws._client_connect_cb.insert(0, check)  # before viser builds the client's handle and replays the scene
    loop = getattr(ws, "_background_event_loop", None)
    for conn in list(live.values()):
        reason = None if conn.request is None else origin_problem(conn.request.headers, bind_host)
        if reason is not None and loop is not None:
            refused.append(reason)
            loop.call_soon_threadsafe(lambda c=conn, r=reason: loop.create_task(c.close(1008, r[:100])))
