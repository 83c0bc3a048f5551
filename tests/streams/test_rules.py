"""The rules file: defaults, points, display, and errors that name the key."""

from __future__ import annotations

import math
import pickle

import pytest

from streams.rules import Rules, RulesError, default_rules_path, load_rules


def _rules(tmp_path, text: str) -> Rules:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return load_rules(path)


def test_the_shipped_default_rules_load():
    rules = load_rules()
    assert default_rules_path().is_file()
    assert rules.source == "default"
    assert (rules.alpha, rules.epsilon) == (0.3, 0.01)
    assert rules.purchase_weights["groceries"] == 0.1
    assert rules.purchase_weights["gambling"] < 0
    assert rules.post_labels["helpful"] > 0 > rules.post_labels["spam"]
    assert rules.error_bound == pytest.approx(0.01 / 0.7)


def test_missing_keys_take_the_spec_defaults_and_a_custom_file_names_its_source(tmp_path):
    rules = _rules(tmp_path, "")
    assert (rules.alpha, rules.epsilon, rules.display_min, rules.display_max, rules.display_scale) == (0.3, 0.01, 350, 950, 50)
    assert (rules.purchase_default_weight, rules.purchase_max_points) == (0.0, 50.0)
    assert rules.purchase_points("anything", 100) == 0.0
    assert rules.post_points(["helpful"]) == 0.0  # no [post.labels] table: no label rules
    assert rules.source == str(tmp_path / "rules.toml")


def test_purchase_points_are_weight_times_amount_capped(tmp_path):
    rules = _rules(tmp_path, "[purchase]\ndefault_weight = 0.5\nmax_points = 10\n[purchase.weights]\nbooks = 0.1\nbets = -1\n")
    assert rules.purchase_points("books", 30) == pytest.approx(3.0)
    assert rules.purchase_points("unlisted", 30) == 10.0  # 0.5 * 30 = 15, capped
    assert rules.purchase_points("bets", 30) == -10.0  # -30, capped
    assert rules.purchase_points("bets", 4) == -4.0
    assert rules.purchase_reason("books") == "purchase:books"
    assert rules.purchase_reason("unlisted") == "purchase:unlisted"  # named, not "other"
    assert rules.purchase_reason("x" * 100) == "purchase:" + "x" * 63 + "\u2026"


def test_post_points_sum_every_label_and_ignore_unknown_ones(tmp_path):
    rules = _rules(tmp_path, "[post.labels]\nhelpful = 2.0\nspam = -5\n")
    assert rules.post_points(["helpful", "helpful", "spam", "unknown"]) == -1.0
    assert rules.post_contributions(["helpful", "spam", "x", "helpful"]) == [("post:helpful", 2.0), ("post:spam", -5.0), ("post:helpful", 2.0)]
    assert rules.post_points([]) == 0.0
    assert rules.post_contributions(()) == []


def test_display_is_the_logistic_curve_and_safe_for_huge_scores():
    rules = load_rules()
    assert rules.display(0.0) == 650.0
    assert rules.display(50.0) == pytest.approx(350 + 600 / (1 + math.exp(-1)))
    assert rules.display(-50.0) == pytest.approx(350 + 600 / (1 + math.exp(1)))
    assert rules.display(1e9) == 950.0
    assert rules.display(-1e9) == 350.0
    assert rules.display(1e308) == 950.0 and rules.display(-1e308) == 350.0
    assert 350.0 < rules.display(-700.0) < rules.display(-699.0) < 650.0


def test_rules_are_read_only_and_survive_pickling():
    rules = load_rules()
    with pytest.raises(TypeError):
        rules.purchase_weights["groceries"] = 99.0  # type: ignore[index]
    copy = pickle.loads(pickle.dumps(rules))
    assert copy == rules
    assert copy.purchase_points("groceries", 10) == rules.purchase_points("groceries", 10)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[network]\nalpha = 1.0\n", "network.alpha = 1 must satisfy 0 <= alpha < 1"),
        ("[network]\nalpha = -0.1\n", "network.alpha"),
        ("[network]\nalpha = true\n", "network.alpha"),
        ("[network]\nepsilon = 0\n", "network.epsilon"),
        ("[network]\nepsilon = inf\n", "network.epsilon"),
        ("[network]\nepsilon = 'small'\n", "network.epsilon"),
        ("[network]\nalhpa = 0.3\n", "unknown key network.alhpa; did you mean 'alpha'?"),
        ("[netwrok]\nalpha = 0.3\n", "unknown table [netwrok]; did you mean 'network'?"),
        ("network = 3\n", "network = 3 must be a table"),
        ("[display]\nmin = 900\nmax = 100\n", "display.min"),
        ("[display]\nmin = 500\nmax = 500\n", "display.min"),
        ("[display]\nscale = 0\n", "display.scale"),
        ("[purchase]\nmax_points = -1\n", "purchase.max_points"),
        ("[purchase]\ndefault_weight = nan\n", "purchase.default_weight"),
        ("[purchase.weights]\nbooks = true\n", "purchase.weights.books"),
        ("[purchase.weights]\nbooks = -inf\n", "purchase.weights.books"),
        ("[post]\nlabels = 3\n", "post.labels"),
        ("[post.labels]\nspam = [1, 2]\n", "post.labels.spam"),
        ("[network\n", "not valid TOML"),
    ],
)
def test_invalid_rules_fail_fast_naming_the_file_and_key(tmp_path, text, fragment):
    with pytest.raises(RulesError) as error:
        _rules(tmp_path, text)
    assert fragment in str(error.value)
    assert "rules.toml" in str(error.value)


def test_invalid_toml_reports_the_position(tmp_path):
    with pytest.raises(RulesError, match=r"line 2"):
        _rules(tmp_path, "[network]\nalpha = = 0.3\n")


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(RulesError, match=r"rules file .*nope.toml not found"):
        load_rules(tmp_path / "nope.toml")
    with pytest.raises(RulesError, match="cannot be read"):
        load_rules(tmp_path)  # a directory
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"alpha = '\xff'\n")
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(binary)


def test_the_same_rules_written_differently_have_the_same_version_and_any_change_a_new_one(tmp_path):
    one = _rules(tmp_path, '[network]\nalpha = 0.5\nepsilon = 1e-3\n[purchase.weights]\ngroceries = 1\nbooks = 0.25\n[time]\nhalf_life_days = 90\n')
    same = _rules(tmp_path, '# the same, reordered\n[time]\nhalf_life_days = 90.0\n[purchase.weights]\nbooks = 0.25  # a comment\ngroceries = 1.0\n[network]\nepsilon = 0.001\nalpha = 0.50\n')
    assert one.version == same.version
    changed = _rules(tmp_path, '[network]\nalpha = 0.5\nepsilon = 1e-3\n[purchase.weights]\ngroceries = 1\nbooks = 0.26\n[time]\nhalf_life_days = 90\n')
    assert changed.version != one.version
