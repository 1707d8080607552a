"""NBA answer match: checks a model's free-text answer against a canonical short answer.

Load it by path, no hub needed:  ``evaluate.load("nbatune/metrics/nba_answer_match")``.

Rules by ``answer_type``:
* ``number``: the number after the last ``=`` (else the first number) in the first line must be
  within ``tolerance`` of the reference; a trailing ``%`` is ignored.
* ``name``: the first entity of the answer (text up to ``(``, ``,``, ``;`` or a line break),
  normalised (case, accents, punctuation, a leading "the"), must equal the reference or one of its
  aliases (team nicknames such as "Lakers" for "Los Angeles Lakers").
* ``choice``: the first of "player a" / "player b" mentioned must be the reference.
* ``text``: normalised exact match of the first line.
Malformed output scores as wrong; it never raises.
"""

import re
import unicodedata

import datasets
import evaluate

_NUM = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")
TEAM_NICKNAMES = {"76ers": ["sixers"], "trail blazers": ["blazers"], "supersonics": ["sonics"], "mavericks": ["mavs"],
                  "cavaliers": ["cavs"], "timberwolves": ["wolves"]}
PLAYER_ALIASES = {"kareem abdul jabbar": ["lew alcindor", "kareem"], "magic johnson": ["earvin johnson"],
                  "shaquille oneal": ["shaq"], "nikola jokic": ["jokic"], "giannis antetokounmpo": ["giannis"],
                  "hakeem olajuwon": ["akeem olajuwon"]}


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9\s-]", "", text.replace("'", ""))
    text = re.sub(r"[\s-]+", " ", text).strip()
    return re.sub(r"^the ", "", text)


def aliases(reference: str) -> set[str]:
    ref = normalize(reference)
    out = {ref}
    words = ref.split()
    for nick, extra in TEAM_NICKNAMES.items():
        if ref.endswith(" " + nick):
            out.add(nick)
            out.update(extra)
    if len(words) >= 2 and not any(ref.endswith(" " + n) for n in TEAM_NICKNAMES):
        if words[-1] in {"lakers", "celtics", "warriors", "bulls", "spurs", "heat", "pistons", "rockets", "knicks",
                         "bucks", "bullets", "nationals", "royals", "hawks", "suns", "nuggets", "raptors", "thunder",
                         "pacers", "nets", "magic", "jazz", "stags", "capitols"}:
            out.add(words[-1])
    out.update(PLAYER_ALIASES.get(ref, []))
    return out


def first_number(text: str):
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    tail = line.rsplit("=", 1)[-1]
    m = _NUM.search(tail.replace(",", ""))
    return float(m.group()) if m else None


def is_correct(prediction: str, reference: str, answer_type: str = "text", tolerance: float = 0.0) -> bool:
    pred = str(prediction or "").strip()
    if not pred:
        return False
    if answer_type == "number":
        got, want = first_number(pred), first_number(reference)
        return got is not None and want is not None and abs(got - want) <= tolerance + 1e-9
    if answer_type == "choice":
        low = pred.lower()
        hits = [(low.find(o), o) for o in ("player a", "player b") if o in low]
        return bool(hits) and min(hits)[1] == reference.lower()
    first = pred.splitlines()[0]
    if answer_type == "name":
        entity = re.split(r"[(,;]| - | def\.? | beat ", first)[0]
        return normalize(entity) in aliases(reference)
    return normalize(first) == normalize(reference)


class NbaAnswerMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: model answers; references: canonical answers; answer_types and "
                               "tolerances: optional lists of the same length.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, answer_types=None, tolerances=None):
        n = len(predictions)
        answer_types = answer_types or ["text"] * n
        tolerances = tolerances or [0.0] * n
        correct = [is_correct(p, r, t, tol) for p, r, t, tol in zip(predictions, references, answer_types, tolerances)]
        return {"accuracy": sum(correct) / n if n else 0.0, "correct": correct}
