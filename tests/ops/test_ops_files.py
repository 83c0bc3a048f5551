"""The operators' files in ops/: Prometheus config and alert rules (promtool),
the Grafana dashboard and provisioning, and docker-compose.yml's mounts.

The helpers here (the dashboard's and the alerts' expressions, the metric names
they use) are shared with tests/integration/test_ops.py, which runs every one
of those expressions against a real Prometheus scraping a real worker.
"""

from __future__ import annotations

import os
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROMETHEUS_CONFIG = OPS / "prometheus.yml"
ALERTS = OPS / "alerts.yml"
DASHBOARD = OPS / "grafana" / "dashboards" / "standing.json"
DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = OPS / "grafana" / "provisioning" / "dashboards" / "standing.yml"
COMPOSE = ROOT / "docker-compose.yml"

#: the scrape job the dashboard and the alerts select
JOB = "standing-worker"
#: what Grafana substitutes for its interval variables, when a query is run without Grafana
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}

try:  # PyYAML is not a dependency of the project: fall back to a small line parser
    import yaml  # type: ignore
except ImportError:  # pragma: no cover - depends on the environment
    yaml = None


# --- shared helpers ----------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    """Every panel, rows' nested panels included."""
    panels = []
    for panel in dashboard().get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p.get("type") != "row"]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title / refId, expr) for every target of every panel."""
    return [
        (f"{panel['title']} / {target.get('refId', '?')}", target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def substitute_grafana_variables(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def _block_scalars(text: str, key: str) -> list[str]:
    """Values of ``key:`` in a YAML file, plain or block (| and >) scalars; no PyYAML needed."""
    values = []
    lines = text.splitlines()
    i = 0
    pattern = re.compile(rf"^(\s*)(?:-\s+)?{re.escape(key)}:\s*(.*)$")
    while i < len(lines):
        match = pattern.match(lines[i])
        i += 1
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            values.append((" " if value[0] == ">" else "\n").join(line for line in block if line).strip())
        else:
            if value[:1] in ("'", '"') and value[-1:] == value[:1]:
                value = value[1:-1]
            values.append(value)
    return values


def alert_rules() -> list[tuple[str, str]]:
    """(alert name, expr) for every alerting rule of ops/alerts.yml."""
    text = ALERTS.read_text()
    if yaml is not None:
        data = yaml.safe_load(text)
        return [(rule["alert"], rule["expr"].strip()) for group in data["groups"] for rule in group["rules"] if "alert" in rule]
    names, exprs = _block_scalars(text, "alert"), _block_scalars(text, "expr")
    assert len(names) == len(exprs), "every rule of ops/alerts.yml must be an alert with an expr"
    return list(zip(names, exprs))


_COMPARISON = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?(?![\w.])", re.I)


def without_comparisons(expr: str) -> str:
    """An alert's expression with its comparisons to constants removed: the values it compares."""
    return _COMPARISON.sub("", expr)


_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = substitute_grafana_variables(expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue  # a keyword, or a function or aggregation
        names.add(word)
    return names


def known_metric_names() -> set[str]:
    """Sample names the worker can export: streams/runtime/metrics.py plus prometheus-client's defaults, and ``up``."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    from streams.runtime import metrics

    names = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "summary": ("_sum", "_count", "")}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    for family in REGISTRY.collect():  # the default collectors: process_*, python_*
        if family.name.startswith(("process_", "python_")):
            names.update(sample.name for sample in family.samples)
    return names


# --- the tests ---------------------------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        # On CI a missing promtool is a failed install step, not a reason to skip.
        assert not os.environ.get("CI"), "promtool is missing on CI: .ci/run should have installed the prometheus package"
        pytest.skip("promtool is not installed (apt-get install prometheus; CI installs it)")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_prometheus_config():
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules():
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_scrapes_the_workers_and_loads_the_alerts():
    text = PROMETHEUS_CONFIG.read_text()
    assert re.search(rf"^\s*-?\s*job_name:\s*['\"]?{JOB}['\"]?\s*$", text, re.M), f"no scrape job named {JOB}"
    assert re.search(r"^\s*-\s*['\"]?alerts\.yml['\"]?\s*$", text, re.M), "rule_files does not load alerts.yml"


def test_alerts_cover_what_operators_need():
    rules = dict(alert_rules())
    assert len(rules) >= 5
    joined = "\n".join(rules.values())
    for needed in ("standing_consumer_lag_records", "standing_events_rejected_total", "up{", "histogram_quantile", "standing_ready"):
        assert needed in joined, f"no alert uses {needed}"
    text = ALERTS.read_text()
    assert text.count("severity:") == len(rules) and text.count("summary:") == len(rules), "every alert needs a severity and a summary"
    readme = (OPS / "README.md").read_text()
    for name in rules:
        assert name in readme, f"ops/README.md does not explain {name}"


def test_dashboard_parses_and_every_panel_has_a_query():
    data = dashboard()
    assert data["uid"] and data["title"]
    panels = dashboard_panels()
    assert len(panels) >= 12
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        targets = panel.get("targets") or []
        assert any(target.get("expr") for target in targets), f"panel {panel.get('title')!r} has no target with an expr"
        for source in [panel.get("datasource")] + [target.get("datasource") for target in targets]:
            if source is not None:
                assert source.get("uid") == "prometheus", f"panel {panel['title']!r} uses datasource {source}"


def test_dashboard_shows_what_operators_need():
    exprs = "\n".join(expr for _, expr in panel_queries())
    for needed in (
        "standing_events_in_total",
        "standing_events_accepted_total",
        "standing_events_duplicate_total",
        "standing_events_rejected_total",
        "standing_friend_updates_sent_total",
        "standing_event_to_score_seconds_bucket",
        "standing_consumer_lag_records",
        "standing_table_keys",
        "standing_table_bytes",
        "standing_rebalances_total",
        "process_resident_memory_bytes",
        "standing_scores_published_total",
        "standing_batch_duration_seconds_bucket",
    ):
        assert needed in exprs, f"no panel shows {needed}"
    assert re.search(r"rate\(standing_friend_updates_sent_total\[[^\]]+\]\)\)\s*/\s*sum\(rate\(standing_events_accepted_total", exprs), (
        "no amplification panel (friend updates sent / events accepted)"
    )


def test_metric_name_extraction():
    assert metric_names('sum by (le, agent) (rate(standing_batch_duration_seconds_bucket{agent="x"}[$__rate_interval]))') == {
        "standing_batch_duration_seconds_bucket"
    }
    assert metric_names("up{job=\"a\"} == 0 and on(instance) foo_total offset 5m > 1e3") == {"up", "foo_total"}
    assert without_comparisons("sum(a) > 10000\nand\nsum(deriv(b[10m])) > 0") == "sum(a)\nand\nsum(deriv(b[10m]))"


def test_every_metric_referenced_exists():
    known = known_metric_names()
    queries = [(f"panel {name}", expr) for name, expr in panel_queries()] + [(f"alert {name}", expr) for name, expr in alert_rules()]
    assert queries
    unknown = [(where, name) for where, expr in queries for name in sorted(metric_names(expr)) if name not in known]
    assert not unknown, f"metrics not defined in streams/runtime/metrics.py nor default: {unknown}"


def test_grafana_provisioning():
    datasources = DATASOURCES.read_text()
    assert re.search(r"^\s*uid:\s*['\"]?prometheus['\"]?\s*$", datasources, re.M), "the datasource must have uid prometheus"
    assert re.search(r"^\s*type:\s*prometheus\s*$", datasources, re.M)
    providers = DASHBOARD_PROVIDERS.read_text()
    assert re.search(r"^\s*path:\s*\S+", providers, re.M), "the dashboard provider needs a path"


def _compose_host_paths(text: str) -> list[str]:
    """Every relative host path (``./...``) docker-compose.yml mentions: volumes, build contexts, env files."""
    if yaml is not None:
        data = yaml.safe_load(text)
        paths = []

        def walk(node):
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
            elif isinstance(node, str) and node.startswith("./"):
                paths.append(node.split(":", 1)[0])

        walk(data.get("services", {}))
        return paths
    uncommented = "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())
    return re.findall(r"(?:^|[\s\"'\[,])(\./[^:\"'\s,\]]*)", uncommented, re.M)


def test_compose_mounts_only_files_that_exist():
    text = COMPOSE.read_text()
    paths = _compose_host_paths(text)
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing, f"docker-compose.yml mounts paths that do not exist: {missing}"
    # the build context of the worker image
    if re.search(r"^\s*build:\s*\.\s*$", text, re.M):
        assert (ROOT / "Dockerfile").exists()


def test_compose_host_path_parser():
    sample = (
        "services:\n  prometheus:\n    volumes:\n      - ./ops/prometheus.yml:/etc/prometheus/prometheus.yml:ro\n"
        '      - "./ops/alerts.yml:/etc/prometheus/alerts.yml:ro"\n      - data:/prometheus  # ./not-this\n      - /data\n'
    )
    assert _compose_host_paths(sample) == ["./ops/prometheus.yml", "./ops/alerts.yml"]
