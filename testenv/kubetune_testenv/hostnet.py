"""The host's own network address, which pods on a real node use to reach the control plane."""

from __future__ import annotations

import socket

# Any routable address works: connecting a UDP socket sends nothing, it only picks the source address
# the kernel would use for the default route.
_PROBE_ADDRESS = ("203.0.113.1", 9)  # TEST-NET-3 (RFC 5737), never a real peer


def primary_ipv4() -> str:
    """The source address of the default route, or 127.0.0.1 on a host without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(_PROBE_ADDRESS)
        except OSError:
            return "127.0.0.1"
        address: str = sock.getsockname()[0]
    return address
