"""Properties of the scorer over generated inputs (hypothesis): the arithmetic parser never crashes and
computes what the expression means, refusals stay refusals, and a correct answer stays correct however it
is spaced, cased or labelled."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbatune.scoring import scorer

# 300 examples a property; `make mutation` runs each mutant with fewer (NBATUNE_HYPOTHESIS_EXAMPLES)
SETTINGS = settings(max_examples=int(os.environ.get("NBATUNE_HYPOTHESIS_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TEAMS = ["Los Angeles Lakers", "Minneapolis Lakers", "Boston Celtics", "Philadelphia 76ers", "Golden State Warriors",
         "Philadelphia Warriors", "Orlando Magic", "Miami Heat", "Chicago Bulls", "San Antonio Spurs"]
PLAYERS = ["Magic Johnson", "Dennis Johnson", "Shaquille O'Neal", "Nikola Jokic", "Kareem Abdul-Jabbar",
           "Tim Duncan", "LeBron James", "Stephen Curry"]


def m():
    return scorer()


# ---- arithmetic -------------------------------------------------------------------------------

def expressions(depth: int = 3):
    """(text, value) pairs of arithmetic the parser must accept, with the value computed here."""
    leaf = st.integers(min_value=0, max_value=999).map(lambda n: (str(n), float(n)))
    if depth == 0:
        return leaf

    def combine(args):
        (a, va), op, (b, vb), paren = args
        if op == "/" and vb == 0:
            return a, va
        value = {"+": va + vb, "-": va - vb, "x": va * vb, "*": va * vb, "/": va / vb if vb else 0.0}[op]
        text = f"{a} {op} {b}"
        return (f"({text})", value) if paren else (text, value)

    sub = expressions(depth - 1)
    return st.one_of(leaf, st.tuples(sub, st.sampled_from(["+", "-", "x", "*", "/"]), sub, st.booleans()).map(combine))


@SETTINGS
@given(st.text(max_size=60))
def test_the_parser_never_crashes_and_returns_a_finite_number_or_none(text):
    value = m().safe_eval(text)
    assert value is None or (isinstance(value, float) and math.isfinite(value))


@SETTINGS
@given(expressions())
def test_the_parser_computes_what_the_expression_means_with_the_usual_precedence(expr):
    text, _ = expr
    # the value of the text as written, by Python's own precedence on the same tokens (x is *)
    want = _python_value(text)
    got = m().safe_eval(text)
    if want is None:  # a division by zero somewhere inside
        assert got is None
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def _python_value(text: str):
    import ast
    import operator

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def walk(node):
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp):
            return -walk(node.operand)
        return float(node.value)

    try:
        return walk(ast.parse(text.replace("x", "*"), mode="eval").body)
    except ZeroDivisionError:
        return None


REFUSED = st.one_of(
    st.from_regex(r"[a-wyzA-Z_]{1,8}\(?[0-9]{0,3}\)?", fullmatch=True),  # names and calls
    st.tuples(st.integers(0, 99), st.integers(0, 99)).map(lambda t: f"{t[0]} ** {t[1]}"),
    st.tuples(st.integers(0, 99), st.integers(0, 99)).map(lambda t: f"{t[0]} ^ {t[1]}"),
    st.integers(1, 99).map(lambda n: f"{n}e5"),
    st.integers(0, 99).map(lambda n: f"{n} / 0"),
    st.integers(0, 99).map(lambda n: f"({n}"),
)


@SETTINGS
@given(REFUSED, st.sampled_from(["{}", " {} ", "({})", "{} + 1", "2 x ({})"]))
def test_a_refused_expression_stays_refused_inside_a_larger_one(bad, frame):
    assert m().safe_eval(bad) is None
    assert m().safe_eval(frame.format(bad)) is None


# ---- correct answers stay correct -----------------------------------------------------------------

def _variants(draw_space, draw_case, text: str) -> str:
    text = {"upper": text.upper(), "lower": text.lower(), "same": text}[draw_case]
    return draw_space.replace("_", text)


SPACING = st.sampled_from(["_", "  _  ", "_.", "_!", "The answer is _.", "It was _, clearly", "\t_\n(more text)"])
CASES = st.sampled_from(["upper", "lower", "same"])


@SETTINGS
@given(st.sampled_from(TEAMS + PLAYERS), SPACING, CASES, st.data())
def test_a_right_name_stays_right_under_spacing_case_and_framing(reference, spacing, case, data):
    pool = TEAMS if reference in TEAMS else PLAYERS
    others = data.draw(st.lists(st.sampled_from([p for p in pool if p != reference]), max_size=4, unique=True))
    candidates = [reference, *others]
    answer = _variants(spacing, case, reference)
    assert m().is_correct(answer, reference, "name", 0.0, candidates), (answer, candidates)
    if others:  # naming a competitor as well is a hedge, whatever the framing
        hedge = _variants(spacing, case, f"{reference} or {others[0]}")
        assert not m().is_correct(hedge, reference, "name", 0.0, candidates), (hedge, candidates)


@SETTINGS
@given(st.integers(1, 60), st.integers(1, 40), st.integers(0, 20), st.sampled_from(["TS%", "ts%", "TS %", ""]),
       st.sampled_from([" x ", " * ", "x", " × "]), st.sampled_from(["", " ", "  "]))
def test_a_right_formula_stays_right_under_label_operator_and_spacing(pts, fga, fta, label, times, pad):
    reference = f"TS% = 100 x {pts} / (2 x ({fga} + 0.44 x {fta}))"
    body = f"100{times}{pts} / (2{times}({fga} + 0.44{times}{fta}))"
    answer = pad + (f"{label} = {body}" if label else body) + pad
    assert m().is_correct(answer, reference, "number", 0.05), answer
    wrong = answer.replace(f"{pts} /", f"{pts + 1} /", 1)  # one number misread
    value = 100 * pts / (2 * (fga + 0.44 * fta))
    if abs(100 * (pts + 1) / (2 * (fga + 0.44 * fta)) - value) > 0.05:
        assert not m().is_correct(wrong, reference, "number", 0.05), wrong
