"""The embedded Kafka-compatible broker: noida-db's binary, Kafka only, on loopback.

The ``noida-db`` console script is a Python wrapper that spawns the real
binary; killing the wrapper would orphan the broker, so we run the binary
itself, in its own process group, with a parent-death signal, and stop the
whole group.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class BrokerError(Exception):
    pass


def broker_binary() -> Path:
    try:
        import noida_db
    except ImportError:
        raise BrokerError("noida-db is not installed; run `make install`") from None
    binary = Path(noida_db.__file__).parent / "noida-db"
    if not binary.is_file():
        raise BrokerError(f"the noida-db binary is missing at {binary}; reinstall with `make install`")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _child_setup() -> None:
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _answers_kafka(host: str, port: int, timeout: float = 1.0) -> bool:
    """True once the port speaks Kafka: an ApiVersions request gets a reply."""
    # ApiVersions v0: size, api_key=18, api_version=0, correlation_id=1, client_id="standing"
    client_id = b"standing"
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big")
    body += len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(len(body).to_bytes(4, "big") + body)
            header = sock.recv(8)
            return len(header) >= 8 and int.from_bytes(header[4:8], "big") == 1
    except OSError:
        return False


class EmbeddedBroker:
    def __init__(self, port: int = 9092, data_dir: Path = Path(".standing/broker"), host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.port = port
        self.host = host
        self.data_dir = Path(data_dir)
        self.log_path = log_path or self.data_dir / "broker.log"
        self._process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Its exit status once it stopped (-9: killed, as the kernel does when memory runs out)."""
        return self._process.returncode if self._process else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 30.0) -> "EmbeddedBroker":
        if self.is_running():
            return self
        if port_is_open(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is in use: another broker is running? "
                f"use it with --broker {self.address}, stop it, or pick another --port"
            )
        binary = broker_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        command = [str(binary), "start", "--only", "kafka", "--kafka-port", str(self.port), "--data-dir", str(self.data_dir), "--host", self.host]
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_child_setup)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerError(f"the broker exited at start with code {code}; its log ({self.log_path}):\n{self.log_tail()}")
            if _answers_kafka(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the broker did not answer on {self.address} within {timeout:.0f} s; log:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of broker trouble)."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the process group we started (a process and its children), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_foreground(port: int, data_dir: Path, host: str = "127.0.0.1") -> int:
    """`standing broker`: run until Ctrl-C or SIGTERM, then stop cleanly."""
    broker = EmbeddedBroker(port=port, data_dir=data_dir, host=host)
    stopping = {"signal": None}

    def on_signal(signum, _frame) -> None:
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        broker.start()
        print(f"standing broker: Kafka at {broker.address} (data in {data_dir}, log {broker.log_path}); Ctrl-C to stop", flush=True)
        while stopping["signal"] is None:
            if not broker.is_running():
                print(f"standing broker: the broker died; log:\n{broker.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print("standing broker: stopping", flush=True)
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
