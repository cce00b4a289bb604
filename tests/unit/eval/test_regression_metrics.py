"""Number extraction from answers and the regression metrics built on it (against sklearn)."""

from __future__ import annotations

import pytest
from sklearn.metrics import r2_score

from honed.eval.metrics.regression import extract_number, is_numeric_reference, regression_metrics


@pytest.mark.parametrize("text, expected", [
    ("3.5 mmol/L", 3.5),
    ("\u22122", -2.0),                 # Unicode minus
    ("1,200", 1200.0),                # thousands separator
    ("血糖约为5.6毫摩尔每升", 5.6),       # digits inside Chinese text
    ("正常值为１２０", 120.0),            # full-width digits
    ("HbA1c of 6.5%", 6.5),           # the 1 in HbA1c is part of a name
    ("1.2e3 cells", 1200.0),
    ("between -0.5 and 3", -0.5),
    ("no number here", None),
    ("", None),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_extract_last_number():
    assert extract_number("from 2 to 7 mmol/L", which="last") == 7.0


def test_numeric_reference_detection():
    assert is_numeric_reference("5.6 mmol/L") and is_numeric_reference("−2")
    assert not is_numeric_reference("Fasting glucose is usually 70 to 99 mg/dL in adults.")
    assert not is_numeric_reference("no number")


def test_regression_metrics_match_hand_values_and_sklearn():
    preds = ["3.5 mmol/L", "\u22122", "1,200", "约为5.6毫摩尔每升", "I do not know"]
    refs = ["3", "-1", "1000", "6", "4"]
    m = regression_metrics(preds, refs)
    assert m["n_scored"] == 4 and m["n_no_answer_number"] == 1 and m["n_no_reference_number"] == 0
    assert m["mae"] == pytest.approx((0.5 + 1 + 200 + 0.4) / 4)
    assert m["mse"] == pytest.approx((0.25 + 1 + 40000 + 0.16) / 4)
    assert m["r2"] == pytest.approx(r2_score([3, -1, 1000, 6], [3.5, -2, 1200, 5.6]))


def test_r2_is_none_when_undefined():
    assert regression_metrics(["1"], ["2"])["r2"] is None          # one pair
    assert regression_metrics(["1", "3"], ["2", "2"])["r2"] is None  # constant references
    assert regression_metrics(["x"], ["2"])["mse"] is None
