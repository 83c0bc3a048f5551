"""The rules file (TOML, spec section 2): what behaviour is worth, and the network's knobs.

Loading is strict on purpose: an unknown table or key is an error naming it,
because a typo (``alhpa = 0.5``) that silently fell back to a default would
score everyone with rules nobody wrote.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence


#: network.mode: "blend" mixes the friends' scores in; "lift_only" lets them raise a score, never lower it.
NETWORK_MODES = ("blend", "lift_only")


class RulesError(Exception):
    """A rules file that cannot be used; the message names the file and the key."""


def default_rules_path() -> Path:
    """The rules shipped with Standing (package data of ``streams``)."""
    return Path(str(resources.files("streams").joinpath("default_rules.toml")))


#: table -> key -> default (the spec's example); None marks a table of name = number
_SHAPE: dict[str, dict[str, float | None]] = {
    "network": {"alpha": 0.3, "epsilon": 0.01, "mode": "blend"},
    "display": {"min": 350.0, "max": 950.0, "scale": 50.0},
    "purchase": {"default_weight": 0.0, "max_points": 50.0, "weights": None},
    "post": {"labels": None},
    "time": {"half_life_days": 0.0, "max_age_days": 0.0},
}


def _frozen(mapping: Mapping[str, float]) -> Mapping[str, float]:
    return mapping if isinstance(mapping, MappingProxyType) else MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class Rules:
    """Validated rules. Build with ``load_rules``; the defaults are the spec's example."""

    alpha: float = 0.3
    epsilon: float = 0.01
    #: "blend" (spec section 3) or "lift_only" (section 10: friends can raise a score, never lower it)
    network_mode: str = "blend"
    display_min: float = 350.0
    display_max: float = 950.0
    display_scale: float = 50.0
    purchase_default_weight: float = 0.0
    purchase_max_points: float = 50.0
    purchase_weights: Mapping[str, float] = field(default_factory=dict)
    post_labels: Mapping[str, float] = field(default_factory=dict)
    #: a point loses half its weight every this many days of event time (0: never; spec section 7)
    half_life_days: float = 0.0
    #: purchases and posts older than this many days of event time count nothing (0: forever)
    max_age_days: float = 0.0
    #: where they were read from (a path, "default", "rules topic"); not part of the version
    source: str = "default"
    #: the TOML text they were read from (published to the rules topic as it is)
    text: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Read-only tables: rules are shared by every agent of a worker.
        object.__setattr__(self, "purchase_weights", _frozen(self.purchase_weights))
        object.__setattr__(self, "post_labels", _frozen(self.post_labels))

    def __reduce__(self):  # mappingproxy does not pickle; rebuild from plain dicts
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["purchase_weights"] = dict(self.purchase_weights)
        values["post_labels"] = dict(self.post_labels)
        return (_rebuild, (values,))

    def purchase_points(self, category: str, amount: float) -> float:
        """clamp(weight(category) * amount, -max_points, max_points)."""
        points = self.purchase_weights.get(category, self.purchase_default_weight) * amount
        cap = self.purchase_max_points
        return -cap if points < -cap else cap if points > cap else points

    def purchase_reason(self, category: str) -> str:
        """The reason code explanations group a purchase under: its category, named (at most 64 characters of it)."""
        return f"purchase:{category}" if len(category) <= 64 else f"purchase:{category[:63]}\u2026"

    def post_contributions(self, labels: Sequence[str]) -> list[tuple[str, float]]:
        """``("post:<label>", points)`` per label with a rule, repeats included; unknown labels add nothing."""
        table = self.post_labels
        return [(f"post:{label}", table[label]) for label in labels if label in table]

    def post_points(self, labels: Sequence[str]) -> float:
        """The points of one post: the sum over its labels (unknown labels 0)."""
        table = self.post_labels
        return sum(table.get(label, 0.0) for label in labels)

    @property
    def version(self) -> str:
        """A name for these rules, derived from their parsed content (spec section 8).

        The same rules written differently (comments, order, 1 or 1.0) have
        the same version; a change of any value makes a new one.
        """
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in ("source", "text")}
        values["purchase_weights"] = dict(sorted(self.purchase_weights.items()))
        values["post_labels"] = dict(sorted(self.post_labels.items()))
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
        return f"r-{digest[:12]}"

    @property
    def half_life_ms(self) -> float:
        return self.half_life_days * DAY_MS

    @property
    def max_age_ms(self) -> float:
        return self.max_age_days * DAY_MS

    def decay(self, later_ms: float, earlier_ms: float) -> float:
        """The factor a value of time ``earlier_ms`` is multiplied by to be valid at ``later_ms``: 2^(-(later - earlier) / half-life)."""
        if not self.half_life_days or later_ms == earlier_ms:
            return 1.0
        return 2.0 ** (-(later_ms - earlier_ms) / (self.half_life_days * DAY_MS))

    def counts_at(self, event_ts: int, stream_ms: int) -> bool:
        """Whether an event of time ``event_ts`` still counts at stream time ``stream_ms`` (the maximum age)."""
        return not self.max_age_days or stream_ms - event_ts < self.max_age_days * DAY_MS

    def display(self, raw: float) -> float:
        """min + (max - min) / (1 + exp(-raw / scale)), without overflow for any raw."""
        x = raw / self.display_scale
        span = self.display_max - self.display_min
        if x >= 0:
            return self.display_min + span / (1.0 + math.exp(-x))
        e = math.exp(x)  # x < 0: no overflow, and exact where 1/(1+exp(-x)) would lose digits
        return self.display_min + span * e / (1.0 + e)

    @property
    def error_bound(self) -> float:
        """epsilon / (1 - alpha): how far a published raw score may be from the exact fixed point."""
        return self.epsilon / (1.0 - self.alpha)


#: Milliseconds in a day.
DAY_MS = 24 * 3600 * 1000


def _rebuild(values: dict[str, Any]) -> Rules:
    return Rules(**values)


def _unknown(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}expected one of: {', '.join(choices)}"


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RulesError(f"{where}: {key} = {value!r} must be a number")
    if not math.isfinite(value):
        raise RulesError(f"{where}: {key} = {value!r} must be finite")
    return float(value)


def _read_text(file: Path) -> str:
    try:
        return file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RulesError(f"rules file {file} not found; pass an existing TOML file or omit --rules for the defaults") from None
    except UnicodeDecodeError:
        raise RulesError(f"{file}: not valid TOML: the file is not UTF-8 text") from None
    except OSError as error:
        raise RulesError(f"rules file {file} cannot be read: {error.strerror or error}") from None


def _check_shape(where: str, data: dict[str, Any]) -> None:
    for table, content in data.items():
        if table not in _SHAPE:
            raise RulesError(f"{where}: unknown table [{table}]; {_unknown(table, list(_SHAPE))}")
        if not isinstance(content, dict):
            raise RulesError(f"{where}: {table} = {content!r} must be a table [{table}]")
        for key, value in content.items():
            if key not in _SHAPE[table]:
                raise RulesError(f"{where}: unknown key {table}.{key}; {_unknown(key, list(_SHAPE[table]))}")
            is_table = _SHAPE[table][key] is None
            if is_table and not isinstance(value, dict):
                raise RulesError(f"{where}: {table}.{key} = {value!r} must be a table [{table}.{key}] of name = number")


def load_rules(path: Path | str | None = None) -> Rules:
    """Read and check a rules file; None means the default shipped with Standing.

    Missing scalar keys take the spec's example values; a missing
    ``[purchase.weights]`` or ``[post.labels]`` table means no such rules.
    """
    file = Path(path) if path is not None else default_rules_path()
    text = _read_text(file)
    return rules_from_text(text, where=str(file), source="default" if path is None else str(file))


def rules_from_text(text: str, *, where: str = "rules", source: str = "rules topic") -> Rules:
    """Rules from TOML text (a file's, or as published to the rules topic)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RulesError(f"{where}: not valid TOML: {error}") from None
    _check_shape(where, data)

    def scalar(table: str, key: str) -> float:
        return _number(where, f"{table}.{key}", data.get(table, {}).get(key, _SHAPE[table][key]))

    mode = data.get("network", {}).get("mode", "blend")
    if mode not in NETWORK_MODES:
        raise RulesError(f"{where}: network.mode = {mode!r} must be one of {', '.join(map(repr, NETWORK_MODES))}")

    def mapping(table: str, key: str) -> dict[str, float]:
        content = data.get(table, {}).get(key, {})
        return {name: _number(where, f"{table}.{key}.{name}", value) for name, value in content.items()}

    alpha = scalar("network", "alpha")
    epsilon = scalar("network", "epsilon")
    low, high = scalar("display", "min"), scalar("display", "max")
    scale = scalar("display", "scale")
    max_points = scalar("purchase", "max_points")
    half_life, max_age = scalar("time", "half_life_days"), scalar("time", "max_age_days")
    checks = [
        (half_life >= 0, f"time.half_life_days = {half_life:g} must be >= 0 (0: no decay)"),
        (max_age >= 0, f"time.max_age_days = {max_age:g} must be >= 0 (0: events count forever)"),
        (0 <= alpha < 1, f"network.alpha = {alpha:g} must satisfy 0 <= alpha < 1"),
        (epsilon > 0, f"network.epsilon = {epsilon:g} must be > 0"),
        (low < high, f"display.min = {low:g} must be below display.max = {high:g}"),
        (scale > 0, f"display.scale = {scale:g} must be > 0"),
        (max_points >= 0, f"purchase.max_points = {max_points:g} must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise RulesError(f"{where}: {message}")
    return Rules(
        alpha=alpha,
        epsilon=epsilon,
        network_mode=mode,
        display_min=low,
        display_max=high,
        display_scale=scale,
        purchase_default_weight=scalar("purchase", "default_weight"),
        purchase_max_points=max_points,
        purchase_weights=mapping("purchase", "weights"),
        post_labels=mapping("post", "labels"),
        half_life_days=half_life,
        max_age_days=max_age,
        source=source,
        text=text,
    )
