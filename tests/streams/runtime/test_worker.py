"""A worker restarted at once on the same ports waits for its predecessor's sockets instead of failing."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from standing.processes import free_port
from streams.runtime.worker import serve_metrics, wait_for_web_port


def _hold(port: int, seconds: float) -> threading.Thread:
    """Listen on ``port`` for ``seconds`` (a predecessor not yet gone), then let go."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", port))
    held.listen()
    releaser = threading.Thread(target=lambda: (time.sleep(seconds), held.close()))
    releaser.start()
    return releaser


@pytest.mark.parametrize("start", [wait_for_web_port, serve_metrics], ids=["web", "metrics"])
def test_a_port_still_held_is_waited_for_and_said_once(start):
    port = free_port()
    releaser = _hold(port, 0.6)
    said: list[str] = []
    began = time.monotonic()
    start("127.0.0.1", port, wait=10, say=said.append)
    assert time.monotonic() - began >= 0.5
    releaser.join()
    assert len(said) == 2 and "is in use" in said[0] and "pid" in said[0] and "free again" in said[1], said


def test_a_port_held_for_longer_than_the_wait_fails_with_address_in_use():
    port = free_port()
    releaser = _hold(port, 1.0)
    with pytest.raises(OSError) as error:
        wait_for_web_port("127.0.0.1", port, wait=0.3, say=lambda _: None)
    releaser.join()
    assert "in use" in str(error.value)
