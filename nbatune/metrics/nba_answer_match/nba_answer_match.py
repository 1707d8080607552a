"""NBA answer match: checks a model's free-text answer against a canonical short answer.

Load it by path, no hub needed:  ``evaluate.load("nbatune/metrics/nba_answer_match")``.

One rule above all: an answer that offers more than one candidate (two teams, two players, two
numbers, "A or B") is wrong, whatever the answer type. Rules by ``answer_type``:

* ``number`` (program-aided): the first line is split at ``=``; every part that is an arithmetic
  expression (numbers, ``+ - * / x`` and parentheses only, see ``safe_eval``) is computed, a leading
  label such as ``TS%`` is skipped, and all computed parts must agree within ``tolerance`` of the
  reference's value (computed the same way). So ``TS% = 100 x 25 / (2 x (18 + 0.44 x 6))`` is graded on
  the formula and the numbers read from the stat line, not on mental division. With no such part, a
  line holding exactly one number is read as that number ("The TS% is 56.2%"); two or more distinct
  numbers are a hedge, and wrong. A line without a digit is read the same way in number words, zero to
  ninety-nine and "a/one hundred" ("A spider has eight legs."); a line with digits is read by its digits
  alone.
* ``name`` / ``choice`` / ``text`` with ``candidates`` (the other answers of the same category):
  the answer must mention the reference as whole words and mention no other candidate. Aliases, one
  rule for all: a candidate is named by its full name or by one of its aliases (a team's nickname such
  as "Lakers", the listed player nicknames); an alias that two candidates share ("Lakers" for both
  Minneapolis and Los Angeles) names neither.
* ``name`` / ``choice`` without candidates: the same containment rule with the reference alone.
* ``text`` without candidates: normalised exact match of the first line.
Malformed output scores as wrong; it never raises.
"""

import functools
import re
import unicodedata

import datasets
import evaluate

_NUM = re.compile(r"(?<![\d.])-?(?:\d+(?:\.\d+)?|\.\d+)")
TEAM_WORDS = {"76ers", "blazers", "bucks", "bullets", "bulls", "capitols", "cavaliers", "celtics", "heat", "hawks",
              "jazz", "knicks", "lakers", "magic", "mavericks", "nationals", "nets", "nuggets", "pacers", "pistons",
              "raptors", "rockets", "royals", "spurs", "stags", "suns", "supersonics", "thunder", "warriors",
              "clippers", "grizzlies", "hornets", "kings", "pelicans", "timberwolves", "wizards"}
TEAM_NICKNAMES = {"76ers": ["sixers"], "trail blazers": ["blazers"], "supersonics": ["sonics"], "mavericks": ["mavs"],
                  "cavaliers": ["cavs"], "timberwolves": ["wolves"]}
PLAYER_ALIASES = {"kareem abdul jabbar": ["lew alcindor", "kareem"], "magic johnson": ["earvin johnson"],
                  "shaquille oneal": ["shaq"], "nikola jokic": ["jokic"], "giannis antetokounmpo": ["giannis"],
                  "hakeem olajuwon": ["akeem olajuwon"]}


# ---- arithmetic --------------------------------------------------------------------------------

MAX_EXPR_CHARS = 400
MAX_LITERAL = 1e9
MAX_DEPTH = 12
_EXPR_HINT = re.compile(r"\d\s*[*/^x×+(]|[*/^x×(]\s*[\d.(-]")
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([-+*/x×()]))")


class _Refused(ValueError):
    pass


def safe_eval(text: str):
    """Value of an arithmetic expression, or None when ``text`` is anything else.

    Accepted: decimal numbers (at most ``MAX_LITERAL``), ``+ - * /``, ``x`` or ``×`` for
    multiplication, unary minus and parentheses (nested at most ``MAX_DEPTH`` deep), at most
    ``MAX_EXPR_CHARS`` characters. Refused (None): names, calls, exponents, exponent notation,
    division by zero, non-finite results. Never uses ``eval``.
    """
    text = str(text).strip().rstrip("%").strip()
    if not text or len(text) > MAX_EXPR_CHARS:
        return None
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            return None
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    try:
        value, i = _sum(tokens, 0, 0)
    except (_Refused, IndexError, ZeroDivisionError):
        return None
    if i != len(tokens) or value != value or abs(value) == float("inf"):
        return None
    return value


def _sum(t, i, depth):
    value, i = _product(t, i, depth)
    while i < len(t) and t[i] in "+-":
        op = t[i]
        rhs, i = _product(t, i + 1, depth)
        value = value + rhs if op == "+" else value - rhs
    return value, i


def _product(t, i, depth):
    value, i = _unary(t, i, depth)
    while i < len(t) and t[i] in ("*", "/", "x", "×"):
        op = t[i]
        rhs, i = _unary(t, i + 1, depth)
        value = value / rhs if op == "/" else value * rhs
    return value, i


def _unary(t, i, depth):
    if t[i] == "-":
        value, i = _unary(t, i + 1, depth)
        return -value, i
    if t[i] == "(":
        if depth >= MAX_DEPTH:
            raise _Refused("too deep")
        value, i = _sum(t, i + 1, depth + 1)
        if t[i] != ")":
            raise _Refused("unbalanced")
        return value, i + 1
    if t[i][0].isdigit() or t[i][0] == ".":
        value = float(t[i])
        if value > MAX_LITERAL:
            raise _Refused("literal too large")
        return value, i + 1
    raise _Refused(f"unexpected {t[i]!r}")


def value_of(text: str):
    """The number an answer states (program-aided rules in the module docstring), or None."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    parts = line.split("=")
    values = [v for v in (safe_eval(p) for p in parts) if v is not None]
    if values:
        if max(values) - min(values) > 1e-9 + 0.005 * max(abs(v) for v in values):
            return None  # the parts disagree: two answers offered
        return values[-1]
    if _EXPR_HINT.search(line):
        return None  # an arithmetic expression the parser refused (an exponent, a huge literal, ...)
    numbers = {float(n) for n in _NUM.findall(line.replace(",", ""))} or _number_words(line)
    if len(numbers) != 1:
        return None  # none, or a hedge between several
    number = numbers.pop()
    return number if abs(number) <= MAX_LITERAL else None


_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
_WORD_NUM = re.compile(r"\b(?:(?:a|one) hundred|(" + "|".join(_TENS) + r")(?:[- ](" + "|".join(_UNITS[1:10]) +
                       r"))?|(" + "|".join(_UNITS) + r"))\b")


def _number_words(line: str) -> set[float]:
    """The numbers a line states in words (a line with digits is never read this way)."""
    if any(c.isdigit() for c in line):
        return set()
    out = set()
    for m in _WORD_NUM.finditer(line.lower()):
        tens, unit, alone = m.groups()
        out.add(float(_TENS[tens] + (_UNITS.index(unit) if unit else 0)) if tens
                else float(_UNITS.index(alone)) if alone else 100.0)
    return out


# ---- names -------------------------------------------------------------------------------------

def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9\s-]", " ", text.replace("'", ""))
    text = re.sub(r"[\s-]+", " ", text).strip()
    return re.sub(r"^the ", "", text)


def aliases(reference: str) -> set[str]:
    """The full name plus the documented aliases (team nickname, listed player nicknames)."""
    ref = normalize(reference)
    out = {ref}
    words = ref.split()
    for nick, extra in TEAM_NICKNAMES.items():
        if ref.endswith(" " + nick):
            out.add(nick)
            out.update(extra)
    if len(words) >= 2 and words[-1] in TEAM_WORDS:
        out.add(words[-1])
    out.update(PLAYER_ALIASES.get(ref, []))
    return out


def mentioned(prediction: str, candidates) -> set[str]:
    """The candidates (normalised) an answer names as whole words; aliases two candidates share are
    ignored, and a match inside a longer match of another candidate does not count."""
    text = " " + normalize(prediction) + " "
    spans = []
    for alias, owner in _unique_aliases(frozenset(normalize(c) for c in candidates)):
        if f" {alias} " in text:
            for m in re.finditer(r"(?<= )" + re.escape(alias) + r"(?= )", text):
                spans.append((m.start(), m.end(), owner))
    hits = set()
    for s, e, c in spans:
        inside_other = any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) and c2 != c for s2, e2, c2 in spans)
        if not inside_other:
            hits.add(c)
    return hits


@functools.lru_cache(maxsize=256)
def _unique_aliases(pool: frozenset) -> tuple[tuple[str, str], ...]:
    owners: dict[str, set[str]] = {}
    for c in pool:
        if c:
            for a in aliases(c):
                owners.setdefault(a, set()).add(c)
    return tuple((a, next(iter(who))) for a, who in sorted(owners.items()) if len(who) == 1)


def is_correct(prediction: str, reference: str, answer_type: str = "text", tolerance: float = 0.0,
               candidates=None) -> bool:
    pred = str(prediction or "").strip()
    if not pred:
        return False
    if answer_type == "number":
        got, want = value_of(pred), value_of(reference)
        return got is not None and want is not None and abs(got - want) <= tolerance + 1e-9
    pool = set(candidates or []) | {reference}
    if answer_type == "text" and len(pool) == 1:
        return normalize(pred.splitlines()[0]) == normalize(reference)
    return mentioned(pred, pool) == {normalize(reference)}


class NbaAnswerMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: model answers; references: canonical answers; answer_types, "
                               "tolerances and candidates (the competing answers): optional lists of the same "
                               "length.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, answer_types=None, tolerances=None, candidates=None):
        n = len(predictions)
        answer_types = answer_types or ["text"] * n
        tolerances = tolerances or [0.0] * n
        candidates = candidates or [None] * n
        correct = [is_correct(p, r, t, tol, c)
                   for p, r, t, tol, c in zip(predictions, references, answer_types, tolerances, candidates)]
        return {"accuracy": sum(correct) / n if n else 0.0, "correct": correct}
