"""Regression metrics for numeric answers: the number is read out of the text, then MSE, MAE
and R² (scikit-learn) over the samples where both reference and answer hold a number.

Number reading is hand-written because no library reads the forms answers come in: units after
the value ("3.5 mmol/L"), the Unicode minus ("−2"), thousands separators ("1,200"), full-width
digits and Chinese text around the digits ("约为5.6毫摩尔每升").

>>> extract_number("About 3.5 mmol/L"), extract_number("−2"), extract_number("1,200 cells")
(3.5, -2.0, 1200.0)
>>> regression_metrics(["3", "x=5"], ["3", "4"])["mae"]
0.5
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Sequence

# A sign, then digits with optional thousands groups, an optional decimal part, an optional exponent.
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_.])([-+]?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE]([-+]?\d+))?(?![\d])"
)
_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\ufe63": "-", "\uff0d": "-"})


def extract_number(text: str | None, which: str = "first") -> float | None:
    """The first (or `which="last"`) number written in `text`, or None.

    >>> extract_number("血糖约为5.6毫摩尔每升"), extract_number("from 2 to 7", which="last")
    (5.6, 7.0)
    >>> extract_number("１２０ mg/dL"), extract_number("1.2e3"), extract_number("none")
    (120.0, 1200.0, None)
    """
    if not text:
        return None
    # NFKC turns full-width digits into ASCII ones; Chinese characters stay (and bound the number).
    clean = unicodedata.normalize("NFKC", text).translate(_MINUS)
    # A letter right before a digit ("HbA1c") is part of a name, not a number: blank such runs.
    clean = re.sub(r"(?<![\d.])([A-Za-z]+)(\d+)", lambda m: m.group(1) + " " * len(m.group(2)), clean)
    matches = list(_NUMBER.finditer(clean))
    if not matches:
        return None
    m = matches[0] if which == "first" else matches[-1]
    value = float(m.group(2).replace(",", "") + (f"e{m.group(3)}" if m.group(3) else ""))
    return -value if m.group(1) == "-" else value


def is_numeric_reference(text: str | None, max_words: int = 4) -> bool:
    """True for a reference that is a number with at most a short unit ("5.6 mmol/L", "−2", "120").

    >>> is_numeric_reference("5.6 mmol/L"), is_numeric_reference("Glucose is about 5.6 in adults")
    (True, False)
    """
    if extract_number(text) is None:
        return False
    return len(text.split()) <= max_words and len(re.findall(r"[^\W\d_]", text)) <= 12


def regression_metrics(predictions: Sequence[str | None], references: Sequence[str | None]) -> dict:
    """MSE, MAE and R² (sklearn.metrics) of the numbers in `predictions` against `references`.

    A pair counts when both sides hold a number; the others are counted in `n_no_reference_number`
    and `n_no_answer_number` (an answer without a number is a miss the user must see, not a zero).
    R² is None with fewer than two pairs or references that are all equal.
    """
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true, y_pred = [], []
    no_ref = no_answer = 0
    for pred, ref in zip(predictions, references):
        truth = extract_number(ref)
        if truth is None:
            no_ref += 1
            continue
        guess = extract_number(pred)
        if guess is None:
            no_answer += 1
            continue
        y_true.append(truth)
        y_pred.append(guess)
    out = {"n_scored": len(y_true), "n_no_reference_number": no_ref, "n_no_answer_number": no_answer,
           "mse": None, "mae": None, "r2": None}
    if y_true:
        out["mse"] = float(mean_squared_error(y_true, y_pred))
        out["mae"] = float(mean_absolute_error(y_true, y_pred))
        if len(y_true) > 1 and len(set(y_true)) > 1:
            r2 = float(r2_score(y_true, y_pred))
            out["r2"] = r2 if math.isfinite(r2) else None
    return out
