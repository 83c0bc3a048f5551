"""The rules file: defaults, points, display, and errors that name the key."""

from __future__ import annotations

import pytest

from streams.rules import RulesError, load_rules


def _rules(tmp_path, text: str):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return load_rules(path)


def test_default_rules_load_and_are_sane():
    rules = load_rules()
    assert 0 <= rules.alpha < 1 and rules.epsilon > 0
    assert rules.source == "default"
    assert rules.error_bound == pytest.approx(rules.epsilon / (1 - rules.alpha))


def test_missing_keys_take_the_spec_defaults(tmp_path):
    rules = _rules(tmp_path, "")
    assert (rules.alpha, rules.epsilon, rules.display_min, rules.display_max, rules.display_scale) == (0.3, 0.01, 350, 950, 50)
    assert rules.purchase_points("anything", 100) == 0.0


def test_purchase_points_are_weight_times_amount_capped(tmp_path):
    rules = _rules(tmp_path, "[purchase]\ndefault_weight = 0.5\nmax_points = 10\n[purchase.weights]\nbooks = 0.1\nbets = -1.0\n")
    assert rules.purchase_points("books", 30) == pytest.approx(3.0)
    assert rules.purchase_points("other", 30) == 10.0
    assert rules.purchase_points("bets", 30) == -10.0
    assert rules.purchase_reason("books") == "purchase:books"
    assert rules.purchase_reason("other") == "purchase:other"


def test_post_points_sum_labels_and_ignore_unknown(tmp_path):
    rules = _rules(tmp_path, "[post.labels]\nhelpful = 2.0\nspam = -5\n")
    assert rules.post_points(["helpful", "helpful", "spam", "unknown"]) == -1.0
    assert rules.post_contributions(["spam", "x"]) == [("post:spam", -5.0)]
    assert rules.post_points([]) == 0


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[network]\nalpha = 1.0\n", "network.alpha"),
        ("[network]\nalpha = -0.1\n", "network.alpha"),
        ("[network]\nepsilon = 0\n", "network.epsilon"),
        ("[network]\nepsilon = 'small'\n", "network.epsilon"),
        ("[network]\nalhpa = 0.3\n", "network.alhpa"),
        ("[netwrok]\nalpha = 0.3\n", "[netwrok]"),
        ("[display]\nmin = 900\nmax = 100\n", "display.min"),
        ("[display]\nscale = 0\n", "display.scale"),
        ("[purchase]\nmax_points = -1\n", "purchase.max_points"),
        ("[purchase.weights]\nbooks = true\n", "purchase.weights.books"),
        ("[post]\nlabels = 3\n", "post.labels"),
        ("[network\n", "not valid TOML"),
    ],
)
def test_invalid_rules_fail_fast_naming_the_key(tmp_path, text, fragment):
    with pytest.raises(RulesError) as error:
        _rules(tmp_path, text)
    assert fragment in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RulesError, match="not found"):
        load_rules(tmp_path / "nope.toml")
