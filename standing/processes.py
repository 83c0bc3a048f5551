"""Starting and stopping the processes a command needs (and only those).

Commands such as ``replay`` and ``demo`` start a broker or a worker when none
is running and must stop exactly what they started, even on Ctrl-C.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from topology.settings import Settings

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so nothing is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


#: ports free_port handed out in this process: never twice
_HANDED_OUT: set[int] = set()
_PICK = random.SystemRandom()  # not the seeded ``random`` a caller may be using


def _ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port free now, for a server this process is about to start.

    Not one the kernel picks (``bind(port 0)``): those come from the ephemeral
    range, from which every outgoing connection (Kafka clients, the workers'
    own) also takes its local port, and one did take such a port between the
    check and the worker's bind ("address already in use"). Below that range
    only servers bind; a port is not handed out twice by one process.
    """
    low = _ephemeral_low()
    if low > 21024:
        for _ in range(100):
            port = _PICK.randrange(20000, low)
            if port not in _HANDED_OUT and _bindable(port):
                _HANDED_OUT.add(port)
                return port
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _HANDED_OUT.add(port)
    return port


def start_worker_process(settings: Settings, *, log_path: Path, rules_path: Path | None = None) -> subprocess.Popen:
    """A ``standing worker`` child process with these settings."""
    command = [
        sys.executable,
        "-m",
        "standing.cli",
        "worker",
        "--broker",
        settings.broker,
        "--data-dir",
        str(settings.data_dir),
        "--web-port",
        str(settings.web_port),
        "--metrics-port",
        str(settings.metrics_port),
        "--partitions",
        str(settings.partitions),
        "--app-id",
        settings.app_id,
    ]
    if rules_path is not None:
        command += ["--rules", str(rules_path)]
    if settings.worker_id:
        command += ["--worker-id", settings.worker_id]
    # Batching and compression have no flag of their own; the child reads them from the environment.
    env = {
        **os.environ,
        "STANDING_BATCH_SIZE": str(settings.batch_size),
        "STANDING_BATCH_WAIT_MS": str(round(settings.batch_wait * 1000)),
        "STANDING_PROPAGATION_SLICE_MS": str(settings.propagation_slice_ms),
        "STANDING_PROPAGATION_SHARE": str(settings.propagation_share),
        "STANDING_WAITING_UPDATES_LIMIT": str(settings.waiting_updates_limit),
        "STANDING_REQUEST_TIMEOUT_MS": str(settings.request_timeout_ms),
        "STANDING_ROCKSDB_COMPRESSION": settings.rocksdb_compression,
        "STANDING_ROCKSDB_LEVEL0_COMPACTION_TRIGGER": str(settings.rocksdb_level0_compaction_trigger),
        "STANDING_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "STANDING_EXPLAIN_FRIENDS": "1" if settings.explain_friends else "0",
    }
    if settings.schema_registry_user_info:
        env["STANDING_SCHEMA_REGISTRY_USER_INFO"] = settings.schema_registry_user_info
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def scrape_metrics(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> dict[tuple[str, tuple], float]:
    """Samples of a metrics endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def wait_for_metrics(port: int, process: subprocess.Popen | None = None, timeout: float = 60.0, log_path: Path | None = None) -> None:
    """Wait until a worker serves metrics (it does once it has started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = ""
            if log_path is not None and log_path.exists():
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"the worker exited with code {process.returncode}:\n{tail}")
        try:
            scrape_metrics(port, timeout=1.0)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the worker did not serve metrics on port {port} within {timeout:.0f} s")


def sum_samples(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for (sample_name, sample_labels), value in samples.items():
        if sample_name != name:
            continue
        as_dict = dict(sample_labels)
        if all(as_dict.get(k) == v for k, v in labels.items()):
            total += value
    return total


def by_label(samples: dict[tuple[str, tuple], float], name: str, label: str) -> dict[str, float]:
    result: dict[str, float] = {}
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == name:
            key = dict(sample_labels).get(label, "")
            result[key] = result.get(key, 0.0) + value
    return result


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
