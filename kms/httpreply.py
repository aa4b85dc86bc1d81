"""The one way pykms's small HTTP servers (metrics, the YubiHSM connector bridge, simulators) send a reply."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

__all__ = ["send_reply"]


def send_reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    """A complete reply with its length, so HTTP/1.1 keep-alive clients know where it ends."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
