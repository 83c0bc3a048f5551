"""The rules file (TOML, spec section 2): what behaviour is worth, and the network's knobs."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence


class RulesError(Exception):
    pass


def default_rules_path() -> Path:
    return Path(__file__).resolve().parent.parent / "standing" / "default_rules.toml"


#: table -> key -> default (None: a table of name -> number)
_SHAPE: dict[str, dict[str, float | None]] = {
    "network": {"alpha": 0.3, "epsilon": 0.01},
    "display": {"min": 350.0, "max": 950.0, "scale": 50.0},
    "purchase": {"default_weight": 0.0, "max_points": 50.0, "weights": None},
    "post": {"labels": None},
}


@dataclass(frozen=True, slots=True)
class Rules:
    alpha: float = 0.3
    epsilon: float = 0.01
    display_min: float = 350.0
    display_max: float = 950.0
    display_scale: float = 50.0
    purchase_default_weight: float = 0.0
    purchase_max_points: float = 50.0
    purchase_weights: Mapping[str, float] = field(default_factory=dict)
    post_labels: Mapping[str, float] = field(default_factory=dict)
    source: str = "default"

    def purchase_points(self, category: str, amount: float) -> float:
        points = self.purchase_weights.get(category, self.purchase_default_weight) * amount
        cap = self.purchase_max_points
        return -cap if points < -cap else cap if points > cap else points

    def purchase_reason(self, category: str) -> str:
        return f"purchase:{category}" if category in self.purchase_weights else "purchase:other"

    def post_contributions(self, labels: Sequence[str]) -> list[tuple[str, float]]:
        table = self.post_labels
        return [(f"post:{label}", table[label]) for label in labels if label in table]

    def post_points(self, labels: Sequence[str]) -> float:
        return sum(points for _, points in self.post_contributions(labels))

    def display(self, raw: float) -> float:
        x = -raw / self.display_scale
        if x > 700:  # exp would overflow: the score is at the bottom of the scale
            return self.display_min
        return self.display_min + (self.display_max - self.display_min) / (1.0 + math.exp(x))

    @property
    def error_bound(self) -> float:
        """epsilon / (1 - alpha): how far a published raw score may be from the exact one."""
        return self.epsilon / (1.0 - self.alpha)


def _number(source: str, path: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RulesError(f"{source}: {path} = {value!r} must be a finite number")
    return float(value)


def load_rules(path: Path | str | None = None) -> Rules:
    """Read and check a rules file; None means the default shipped with Standing."""
    file = Path(path) if path is not None else default_rules_path()
    source = str(file) if path is not None else "default"
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise RulesError(f"rules file {file} not found") from None
    except tomllib.TOMLDecodeError as error:
        raise RulesError(f"{file}: not valid TOML: {error}") from None
    for table, content in data.items():
        if table not in _SHAPE:
            raise RulesError(f"{file}: unknown table [{table}]; expected one of {', '.join(_SHAPE)}")
        if not isinstance(content, dict):
            raise RulesError(f"{file}: {table} must be a table")
        for key in content:
            if key not in _SHAPE[table]:
                raise RulesError(f"{file}: unknown key {table}.{key}; expected one of {', '.join(_SHAPE[table])}")

    def scalar(table: str, key: str) -> float:
        value = data.get(table, {}).get(key, _SHAPE[table][key])
        return _number(str(file), f"{table}.{key}", value)

    def mapping(table: str, key: str) -> Mapping[str, float]:
        content = data.get(table, {}).get(key, {})
        if not isinstance(content, dict):
            raise RulesError(f"{file}: [{table}.{key}] must be a table of name = number")
        return MappingProxyType({name: _number(str(file), f"{table}.{key}.{name}", v) for name, v in content.items()})

    rules = Rules(
        alpha=scalar("network", "alpha"),
        epsilon=scalar("network", "epsilon"),
        display_min=scalar("display", "min"),
        display_max=scalar("display", "max"),
        display_scale=scalar("display", "scale"),
        purchase_default_weight=scalar("purchase", "default_weight"),
        purchase_max_points=scalar("purchase", "max_points"),
        purchase_weights=mapping("purchase", "weights"),
        post_labels=mapping("post", "labels"),
        source=source,
    )
    checks = [
        (0 <= rules.alpha < 1, f"network.alpha = {rules.alpha} must satisfy 0 <= alpha < 1"),
        (rules.epsilon > 0, f"network.epsilon = {rules.epsilon} must be > 0"),
        (rules.display_min < rules.display_max, f"display.min = {rules.display_min} must be below display.max = {rules.display_max}"),
        (rules.display_scale > 0, f"display.scale = {rules.display_scale} must be > 0"),
        (rules.purchase_max_points >= 0, f"purchase.max_points = {rules.purchase_max_points} must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise RulesError(f"{file}: {message}")
    return rules
