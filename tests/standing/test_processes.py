"""Ports for the servers a test or the bench starts: not ones an outgoing connection can take first."""

from __future__ import annotations

import socket
from contextlib import closing

from standing.processes import _ephemeral_low, free_port


def test_ports_are_free_distinct_and_below_the_range_outgoing_connections_use():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    low = _ephemeral_low()
    if low > 21024:  # Linux's default range starts at 32768; a host that starts it lower gets kernel-picked ports
        assert all(20000 <= port < low for port in ports)
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # still free


def test_the_ephemeral_range_is_read_from_the_kernel_or_defaults(tmp_path):
    custom = tmp_path / "ip_local_port_range"
    custom.write_text("40000\t60999\n")
    assert _ephemeral_low(str(custom)) == 40000
    assert _ephemeral_low(str(tmp_path / "missing")) == 32768
