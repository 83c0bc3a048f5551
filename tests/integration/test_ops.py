"""The dashboard's queries and the alerts' expressions against a real Prometheus
scraping a real worker on the real broker.

Every panel query must return data and every alert expression must be accepted
by the server (and, with its comparisons removed, return the values it
compares); every rule must evaluate without error.
"""

from __future__ import annotations

import asyncio
import os
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from standing import processes
from standing.control import wait_until_quiescent
from standing.population import PopulationConfig, generate_events, write_jsonl
from standing.produce import produce_file
from tests.ops.test_ops_files import (
    ALERTS,
    JOB,
    alert_rules,
    panel_queries,
    substitute_grafana_variables,
    without_comparisons,
)
from topology import topics

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None and not os.environ.get("CI"), reason="the prometheus binary is not installed (apt-get install prometheus; CI installs it)")

EVENTS = 3000


def _prometheus_config(path: Path, metrics_port: int) -> None:
    # JSON is YAML: no PyYAML needed
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    path.write_text(json.dumps(config, indent=2))


def _start_prometheus(tmp_path: Path, metrics_port: int) -> tuple[subprocess.Popen, int, Path]:
    port = processes.free_port()
    config = tmp_path / "prometheus.yml"
    _prometheus_config(config, metrics_port)
    log_path = tmp_path / "prometheus.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=processes._die_with_parent,
    )
    return process, port, log_path


def _get(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:  # 400/422: a bad query, with its error in the body
        return json.loads(error.read() or b"{}") or {"status": "error", "error": str(error)}


def _query(port: int, expr: str) -> dict:
    return _get(port, "/api/v1/query", query=expr)


def _wait_ready(port: int, process: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with code {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"prometheus was not ready within {timeout:.0f} s:\n{log_path.read_text(errors='replace')[-3000:]}")


def _wait_for(port: int, expr: str, timeout: float = 60.0) -> dict:
    """The first non-empty result of ``expr`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    answer: dict = {}
    while time.monotonic() < deadline:
        answer = _query(port, expr)
        if answer.get("status") == "success" and answer["data"]["result"]:
            return answer
        time.sleep(1)
    raise AssertionError(f"{expr!r} returned no data within {timeout:.0f} s: {answer}")


async def _produce_round(settings, tmp_path: Path, seed: int) -> None:
    """A population's events (2% invalid lines, 2% duplicates) and a few records only a worker can reject."""
    now_ms = int(time.time() * 1000)
    config = PopulationConfig(
        users=300, events=EVENTS, seed=seed, invalid_share=0.02, duplicate_share=0.02, start_ts=now_ms - EVENTS * 10
    )
    path = tmp_path / f"events-{seed}.jsonl"
    write_jsonl(path, generate_events(config))
    await produce_file(settings, path, progress=False)
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
    await producer.start()
    try:
        for i in range(5):  # not Avro: the producer's edge never sees these, the worker rejects them
            await producer.send("purchases", f"garbage-{seed}-{i}".encode(), key=b"u0")
            await producer.send("posts", b"", key=b"u1")
        await producer.flush()
    finally:
        await producer.stop()
    await wait_until_quiescent(settings, progress=None)


def test_dashboard_queries_and_alerts_on_a_real_prometheus(fresh_settings, tmp_path):
    settings = fresh_settings
    worker_log = tmp_path / "worker.log"
    worker = processes.start_worker_process(settings, log_path=worker_log)
    prometheus = None
    try:
        processes.wait_for_metrics(settings.metrics_port, worker, log_path=worker_log)
        prometheus, port, prometheus_log = _start_prometheus(tmp_path, settings.metrics_port)
        _wait_ready(port, prometheus, prometheus_log)
        # Ready is not scraping: Prometheus hands its first targets to the scrapers up to ~5 s later
        # (its discovery manager's update interval). A round processed before the first scrape is no
        # change to any rate, and a worker that starts and scores fast enough finished both before it.
        _wait_for(port, f'up{{job="{JOB}"}} == 1')

        # two rounds a few seconds apart, so rates see changes between scrapes
        asyncio.run(_produce_round(settings, tmp_path, seed=1))
        time.sleep(4)
        asyncio.run(_produce_round(settings, tmp_path, seed=2))

        # several scrapes, and the 5 s gauges refreshed after the last round
        _wait_for(port, f'count_over_time(up{{job="{JOB}"}}[1m]) >= 10')
        _wait_for(port, "standing_ready == 1")
        _wait_for(port, "standing_consumer_lag_records")
        time.sleep(6)

        targets = _get(port, "/api/v1/targets")["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"], targets

        failures = []
        panels = panel_queries()
        assert panels
        for where, expr in panels:
            query = substitute_grafana_variables(expr)
            answer = _query(port, query)
            if answer.get("status") != "success":
                failures.append(f"panel {where}: {query!r} failed: {answer.get('error')}")
            elif not answer["data"]["result"]:
                failures.append(f"panel {where}: {query!r} returned no data")
            elif all(series["value"][1] == "NaN" for series in answer["data"]["result"]):
                failures.append(f"panel {where}: {query!r} returned only NaN: {answer['data']['result']}")

        alerts = alert_rules()
        assert alerts
        for name, expr in alerts:
            answer = _query(port, expr)
            if answer.get("status") != "success":
                failures.append(f"alert {name}: {expr!r} failed: {answer.get('error')}")
            values = without_comparisons(expr)
            answer = _query(port, values)
            if answer.get("status") != "success":
                failures.append(f"alert {name}: {values!r} failed: {answer.get('error')}")
            elif not answer["data"]["result"]:
                failures.append(f"alert {name}: {values!r} (its values, comparisons removed) returned no data")

        # Prometheus itself loaded ops/alerts.yml and evaluates every rule without error
        groups = _get(port, "/api/v1/rules")["data"]["groups"]
        loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert set(loaded) == {name for name, _ in alerts}
        for name, rule in loaded.items():
            if rule.get("health") != "ok":
                failures.append(f"rule {name}: health {rule.get('health')!r}: {rule.get('lastError')}")

        assert not failures, "\n".join(failures)
    finally:
        if prometheus is not None:
            processes.stop_process(prometheus)
        processes.stop_process(worker)
