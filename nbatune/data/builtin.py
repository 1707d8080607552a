"""The built-in NBA analytics instruction dataset.

How the split is made (no leakage by construction, and re-checked by ``check_no_leakage``):

* Every task has several phrasings. The last ``HELDOUT_PHRASINGS`` of each task's list are
  reserved: validation and test questions use only those, training uses only the others, so no
  test question text can appear in training.
* History facts (champions, Finals opponents and results, Finals MVPs, MVPs) are all taught in
  training under the training phrasings; validation and test ask about sampled facts with the
  reserved phrasings, disjoint between validation and test.
* Stat lines are drawn fresh from a seeded generator and written in one of ``statlines.FORMATS`` (box
  score, recap prose, markdown table, CSV, ``key: value`` lines), fields shuffled, sometimes with extra
  ones. A line shown in one split never appears in another, in any task or format (``check_no_leakage``
  compares every line in box notation, and searches every earlier split's whole text).
* One format (``UNSEEN_FORMAT``) never appears in training or validation: a third of the computed test
  questions use it and are tagged ``unseen``, so results show seen and unseen formats side by side.
  Computed questions have 9 phrasings (6 formal, 3 as an analyst types them); 3 are held out.
* Validation and test ask at most ``MAX_SAME_ANSWER`` questions with the same answer per category, so
  that no constant answer can pass a category.
* Everything derives from one ``random.Random(seed)``: same seed, byte-identical files.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import analytics as A
from . import statlines
from .facts import CHAMPIONS, FINALS_MVPS, MVPS, league, season_label

HELDOUT_PHRASINGS = 2
# What a short run can learn sets the mix (train and test alike): formulas and definitions generalise
# from a few hundred examples; 300+ history facts need many passes (measured: 13-35% after 1.25 epochs),
# so they are a smaller share, reported per category.
FAMILY_WEIGHTS = {"history": 0.15, "compute": 0.60, "definition": 0.25}
DEFINITION_HELDOUT = 4  # of 9 phrasings: validation and test draw distinct (metric, phrasing) questions


@dataclass
class Example:
    id: str
    category: str
    instruction: str
    input: str
    output: str
    answer: str  # canonical short answer the evaluation checks
    answer_type: str  # "name" | "number" | "choice" | "text"
    tolerance: float  # absolute tolerance for numbers, 0 otherwise
    key: str  # what must never be shared between train and test (fact, or the stat line in box notation)
    format: str = ""  # how the stat line is written (statlines.FORMATS); "" without one
    unseen: bool = False  # True: a test question in the format held out of training and validation

    def to_dict(self) -> dict:
        return asdict(self)


# ---- history facts ---------------------------------------------------------------------------

def _fact_items() -> dict[str, list[dict]]:
    items: dict[str, list[dict]] = {"champion": [], "finals_opponent": [], "finals_mvp": [], "mvp": [],
                                    "season_summary": []}
    for y, (champ, opp, res) in CHAMPIONS.items():
        f = {"Y": y, "S": season_label(y), "L": league(y), "C": champ, "O": opp}
        items["champion"].append({**f, "answer": champ, "type": "name"})
        items["finals_opponent"].append({**f, "answer": opp, "type": "name"})
    for y, name in FINALS_MVPS.items():
        items["finals_mvp"].append({"Y": y, "S": season_label(y), "L": "NBA", "answer": name, "type": "name"})
    for y, name in MVPS.items():
        items["mvp"].append({"Y": y, "S": season_label(y), "L": "NBA", "answer": name, "type": "name"})
    for y, (champ, opp, res) in CHAMPIONS.items():
        parts = [f"Champion: {champ}", f"Finals: beat the {opp} {res}"]
        parts += [f"Finals MVP: {FINALS_MVPS[y]}"] if y in FINALS_MVPS else []
        parts += [f"MVP: {MVPS[y]}"] if y in MVPS else []
        items["season_summary"].append({"Y": y, "S": season_label(y), "L": league(y), "answer": champ, "type": "name",
                                        "output": ". ".join(parts) + "."})
    return items


# Season summaries are training-only: one example teaches up to five facts (about 4x fewer tokens per
# fact than single questions), and the test still asks single facts with held-out phrasings. Series
# results are taught only there: with four possible answers, "4-2" alone scored 42% of them.
TRAIN_ONLY = {"season_summary"}
# Validation and test ask at most this many questions with the same answer per category, so that no
# constant answer ("Boston Celtics", "Michael Jordan") can pass a category.
MAX_SAME_ANSWER = 1

FACT_PHRASINGS: dict[str, list[str]] = {
    "season_summary": [
        "Summarize the {Y} {L} season: champion, Finals result and MVPs.",
        "Give the key facts of the {S} {L} season.",
        "Recap the {Y} {L} title race and awards.",
        "What happened in the {S} {L} season?",
    ],
    "champion": [
        "Which team won the {Y} {L} championship?",
        "Who won the {L} title in the {S} season?",
        "Name the {L} champion of {Y}.",
        "Which franchise won the {L} Finals in {Y}?",
        "Who were the {L} champions in {Y}?",
        "The {S} {L} season ended with which team holding the trophy?",
    ],
    "finals_opponent": [
        "Who did the {C} beat in the {Y} {L} Finals?",
        "Which team lost the {Y} {L} Finals?",
        "Who was the runner-up in the {S} {L} season?",
        "Name the team the {C} defeated for the {Y} title.",
        "Which team reached the {Y} {L} Finals but lost to the {C}?",
        "In the {S} Finals, who was the losing finalist?",
    ],
    "finals_mvp": [
        "Who was the {Y} NBA Finals MVP?",
        "Who won Finals MVP in the {S} season?",
        "Name the Finals Most Valuable Player of {Y}.",
        "Which player was named MVP of the {Y} NBA Finals?",
        "Who took home the Finals MVP award in {Y}?",
        "The {S} Finals MVP went to which player?",
    ],
    "mvp": [
        "Who won the {Y} NBA MVP award?",
        "Who was the regular-season MVP in {S}?",
        "Name the NBA Most Valuable Player for the {S} season.",
        "Which player was voted league MVP in {Y}?",
        "Who was named the NBA's Most Valuable Player for {Y}?",
        "The {S} regular-season MVP award went to whom?",
    ],
}


# ---- computed analytics ----------------------------------------------------------------------
# Program-aided answers: the answer is the metric's formula with this stat line's numbers put in, and
# the scorer computes it (nba_answer_match.safe_eval). The model is graded on knowing the formula and
# reading the right numbers, the part a 135M model can learn; mental division it cannot (measured:
# 0-22% after 250 steps when answers were bare values). Tolerances are half the unit the value is
# usually quoted in, so a plainly stated value ("TS% is 56.2%") rounded as usual scores too.

PLAYER_AVAILABLE = A.PLAYER_FIELDS
TEAM_AVAILABLE = ("pts", "fg", "3p", "ft", "oreb", "tov", "opp", "tmin")
COMPUTE_HELDOUT_PHRASINGS = 3  # of 9 per task
UNSEEN_FORMAT = "kv"  # never in training or validation; a third of the computed test questions
UNSEEN_SHARE = 1 / 3


@dataclass(frozen=True)
class ComputeTask:
    category: str
    make: Callable[[random.Random], object]  # stat line generator
    value: Callable[[object], float]  # the textbook function (analytics.py): tests check expr against it
    fmt: str  # how the value is quoted, e.g. "{:.1f}%" (the dataset card)
    tolerance: float
    expr: Callable[[object], str]  # the formula with this line's numbers: the answer
    phrasings: tuple[str, ...]
    label: str  # how the answer names the metric: "TS% = ..."
    fields: tuple[str, ...]  # the stats the formula needs, always shown
    casual: tuple[str, ...] = ()  # how an analyst types the question; mixed into both sides of the split
    available: tuple[str, ...] = PLAYER_AVAILABLE  # what else a pasted line may show

    @property
    def all_phrasings(self) -> tuple[str, ...]:
        """Four formal and two casual phrasings for training, then two formal and one casual held out."""
        return self.phrasings[:4] + self.casual[:2] + self.phrasings[4:] + self.casual[2:]


def _line_with_turnovers(rng: random.Random):
    """A player line with at least two turnovers: with one, AST/TO is the assist count, which copying a
    number from the question would score."""
    while True:
        line = A.random_player_line(rng)
        if line.tov >= 2:
            return line


def _poss(t) -> str:
    return f"({t.fga} - {t.orb} + {t.tov} + 0.44 x {t.fta})"


COMPUTE_TASKS: list[ComputeTask] = [
    ComputeTask("true_shooting", A.random_player_line, A.true_shooting_pct, "{:.1f}%", 0.05,
                lambda p: f"100 x {p.pts} / (2 x ({p.fga} + 0.44 x {p.fta}))",
                ("Compute this player's true shooting percentage.", "What is the TS% for this stat line?",
                 "Calculate true shooting % from the box score below.", "Find the player's TS%.",
                 "Work out the true shooting percentage of this line.",
                 "How efficient was this scorer by true shooting percentage?"), "TS%", ("pts", "fg", "ft"),
                ("what's his TS%?", "ts% on this line?", "True shooting on this one?")),
    ComputeTask("effective_fg", A.random_player_line, A.effective_fg_pct, "{:.1f}%", 0.05,
                lambda p: f"100 x ({p.fgm} + 0.5 x {p.tpm}) / {p.fga}",
                ("Compute this player's effective field goal percentage.", "What is the eFG% for this line?",
                 "Calculate eFG% from the box score below.", "Find the player's effective FG%.",
                 "Work out the effective field goal percentage here.",
                 "What effective field goal percentage does this line give?"), "eFG%", ("pts", "fg", "3p"),
                ("what's the eFG% here?", "efg% for this?", "Effective FG on this line?")),
    ComputeTask("points_per_shot", A.random_player_line, A.points_per_shot, "{:.2f}", 0.005,
                lambda p: f"{p.pts} / {p.fga}",
                ("Compute points per shot attempt (PTS / FGA).", "How many points per field goal attempt?",
                 "Calculate this player's points per shot.", "Find PTS per FGA for this line.",
                 "What is the points-per-shot-attempt figure here?",
                 "Give points scored per field goal attempt for this game."), "PTS/FGA", ("pts", "fg"),
                ("points per shot here?", "how many pts per FGA?", "PPS for this line?")),
    ComputeTask("assist_turnover", _line_with_turnovers, A.assist_to_turnover, "{:.2f}", 0.005,
                lambda p: f"{p.ast} / {p.tov}",
                ("Compute the assist-to-turnover ratio.", "What is this player's AST/TO ratio?",
                 "Calculate assists per turnover.", "Find the assist to turnover ratio for this line.",
                 "Work out the AST:TOV ratio here.", "How many assists per turnover did the player have?"),
                "AST/TO", ("pts", "ast", "tov"),
                ("ast/to on this?", "what's the assist to turnover?", "AST:TO here?")),
    ComputeTask("game_score", A.random_player_line, A.game_score, "{:.1f}", 0.05,
                lambda p: (f"{p.pts} + 0.4 x {p.fgm} - 0.7 x {p.fga} - 0.4 x ({p.fta} - {p.ftm}) + 0.7 x {p.orb} "
                           f"+ 0.3 x {p.drb} + {p.stl} + 0.7 x {p.ast} + 0.7 x {p.blk} - 0.4 x {p.pf} - {p.tov}"),
                ("Compute John Hollinger's game score for this line.", "What is the game score (GmSc)?",
                 "Calculate Hollinger game score from the box score.", "Find this player's GmSc.",
                 "Work out the Hollinger game score of this performance.",
                 "What game score does this box score produce?"), "GmSc", A.PLAYER_FIELDS[1:],
                ("gmsc for this line?", "what's the game score here?", "Hollinger GmSc on this?")),
    ComputeTask("possessions", A.random_team_game, A.possessions, "{:.1f}", 0.05,
                lambda t: _poss(t)[1:-1],
                ("Estimate the team's possessions.", "How many possessions did this team use?",
                 "Calculate possessions from these team totals.", "Find the possession estimate.",
                 "Work out this team's number of possessions.",
                 "Roughly how many possessions does this box score imply?"), "POSS", ("fg", "ft", "oreb", "tov"),
                ("how many poss here?", "possession count for this game?", "poss estimate?"), TEAM_AVAILABLE),
    ComputeTask("offensive_rating", A.random_team_game, A.offensive_rating, "{:.1f}", 0.05,
                lambda t: f"100 x {t.pts} / {_poss(t)}",
                ("Compute the team's offensive rating.", "What is the ORtg (points per 100 possessions)?",
                 "Calculate offensive rating from these totals.", "Find this team's offensive rating.",
                 "Work out points scored per 100 possessions.", "How many points per 100 possessions did they score?"),
                "ORtg", ("pts", "fg", "ft", "oreb", "tov"),
                ("what's their ORtg?", "ortg for this game?", "Offensive rating here?"), TEAM_AVAILABLE),
    ComputeTask("defensive_rating", A.random_team_game, A.defensive_rating, "{:.1f}", 0.05,
                lambda t: f"100 x {t.opp_pts} / {_poss(t)}",
                ("Compute the team's defensive rating.", "What is the DRtg (points allowed per 100 possessions)?",
                 "Calculate defensive rating from these totals.", "Find this team's defensive rating.",
                 "Work out points allowed per 100 possessions.",
                 "How many points per 100 possessions did they allow?"), "DRtg", ("opp", "fg", "ft", "oreb", "tov"),
                ("what's their DRtg?", "drtg for this game?", "Defensive rating here?"), TEAM_AVAILABLE),
    ComputeTask("net_rating", A.random_team_game, A.net_rating, "{:.1f}", 0.05,
                lambda t: f"100 x ({t.pts} - {t.opp_pts}) / {_poss(t)}",
                ("Compute the team's net rating.", "What is the net rating for this game?",
                 "Calculate net rating (ORtg - DRtg).", "Find this team's net rating.",
                 "Work out the point differential per 100 possessions.",
                 "What was the team's net rating per 100 possessions?"), "NetRtg",
                ("pts", "opp", "fg", "ft", "oreb", "tov"),
                ("net rtg here?", "what's the net rating?", "NetRtg for this game?"), TEAM_AVAILABLE),
    ComputeTask("pace", A.random_team_game, A.pace, "{:.1f}", 0.05,
                lambda t: f"48 x {_poss(t)} / ({t.minutes} / 5)",
                ("Compute the pace (possessions per 48 minutes).", "What was the pace of this game?",
                 "Calculate pace from these team totals.", "Find the team's pace.",
                 "Work out possessions per 48 minutes.", "How fast was the game, by pace?"), "Pace",
                ("fg", "ft", "oreb", "tov", "tmin"),
                ("what was the pace?", "pace for this game?", "How many possessions per 48 here?"), TEAM_AVAILABLE),
    ComputeTask("win_pct", A.random_partial_record, A.win_pct, "{:.3f}", 0.0005,
                lambda s: f"{s.wins} / ({s.wins} + {s.losses})",
                ("Compute the team's winning percentage.", "What is the win% for this season?",
                 "Calculate winning percentage.", "Find this team's win percentage.",
                 "Work out the team's winning percentage for the season.",
                 "What fraction of games did the team win?"), "W%", ("record",),
                ("what's their win%?", "win pct so far?", "Winning percentage here?"), ()),
]


# ---- definitions -----------------------------------------------------------------------------

METRICS: list[tuple[str, str, str, str]] = [
    # (abbreviation, full name, formula, what it measures)
    ("TS%", "true shooting percentage", "PTS / (2 x (FGA + 0.44 x FTA))",
     "scoring efficiency that credits threes and free throws"),
    ("eFG%", "effective field goal percentage", "(FGM + 0.5 x 3PM) / FGA",
     "field goal efficiency that gives a three 1.5 times the weight of a two"),
    ("GmSc", "game score", "PTS + 0.4 FGM - 0.7 FGA - 0.4 (FTA - FTM) + 0.7 ORB + 0.3 DRB + STL + 0.7 AST + "
     "0.7 BLK - 0.4 PF - TOV", "a single-number summary of one game's box-score productivity"),
    ("ORtg", "offensive rating", "100 x PTS / POSS", "points scored per 100 possessions"),
    ("DRtg", "defensive rating", "100 x OPP PTS / POSS", "points allowed per 100 possessions"),
    ("NetRtg", "net rating", "ORtg - DRtg", "point differential per 100 possessions"),
    ("POSS", "possessions", "FGA - OREB + TOV + 0.44 x FTA", "how many times a team had the ball"),
    ("Pace", "pace", "48 x POSS / (MIN / 5)", "possessions per 48 minutes"),
    ("AST/TO", "assist-to-turnover ratio", "AST / TOV", "ball security relative to playmaking"),
    ("W%", "winning percentage", "W / (W + L)", "the share of games won"),
    ("PythW", "Pythagorean wins", "G x PTS^14 / (PTS^14 + OPP^14)", "wins expected from points scored and allowed"),
    ("USG%", "usage percentage", "100 x ((FGA + 0.44 x FTA + TOV) x (Tm MP / 5)) / (MP x (Tm FGA + 0.44 x Tm FTA + Tm TOV))",
     "the share of team plays a player finishes while on the floor"),
    ("PER", "player efficiency rating", "Hollinger's per-minute, pace-adjusted rating scaled so league average is 15",
     "per-minute overall productivity"),
    ("BPM", "box plus/minus", "a regression estimate of points per 100 possessions above an average player",
     "a player's box-score contribution relative to average"),
    ("WS", "win shares", "offensive win shares + defensive win shares", "wins credited to a player"),
    ("VORP", "value over replacement player", "(BPM - (-2.0)) x (% of possessions played) x (team games / 82)",
     "contribution above a replacement-level player"),
]

# When a metric misleads: training-only explanations (free text has no single checkable answer).
CAVEATS: dict[str, str] = {
    "TS%": "It treats every free-throw trip as 0.44 possessions, so and-ones and technicals bend it, and it "
           "says nothing about shot difficulty or volume.",
    "eFG%": "It ignores free throws entirely, so it undersells players who live at the line.",
    "GmSc": "Its weights are fixed guesses; it rewards volume scoring and barely sees defense.",
    "ORtg": "It depends on the possession estimate and on teammates and pace of play, not only on the offense.",
    "DRtg": "Box-score defense is mostly team defense; individual defensive ratings are very noisy.",
    "NetRtg": "Over a few games it is dominated by garbage time, opponent strength and three-point luck.",
    "AST/TO": "It favours low-usage passers; a primary creator with many turnovers can still be far more valuable.",
    "W%": "Early in a season it swings on a handful of close games; point differential predicts better.",
    "PythW": "It assumes close-game results are luck, so a team that is really good late in games beats it.",
    "PER": "It rewards high-usage scoring, even inefficient scoring, and captures little defense.",
    "Pace": "It reflects both teams; a fast opponent raises a slow team's pace.",
}
CAVEAT_PHRASINGS = ["When can {abbr} mislead?", "What is the main weakness of {abbr}?",
                    "Why should analysts be careful with {abbr}?", "What does {abbr} get wrong?"]

DEFINITION_PHRASINGS: dict[str, list[str]] = {
    "definition_abbrev": [
        "What does {abbr} stand for?", "Spell out the stat abbreviation {abbr}.",
        "In basketball analytics, what is {abbr}?", "Expand the abbreviation {abbr}.",
        "Which stat name is behind {abbr}?", "What is the full name of the metric abbreviated {abbr}?",
        "{abbr} is short for what?", "What do the letters {abbr} mean in a box score?",
        "Decode the stat abbreviation {abbr}.",
    ],
    "definition_formula": [
        "Which metric is computed as {formula}?", "Name the statistic with the formula {formula}.",
        "What stat does the formula {formula} define?", "Identify the metric: {formula}.",
        "Which basketball statistic equals {formula}?", "What is {formula} called?",
        "The formula {formula} gives which metric?", "Analysts compute {formula}; what is it called?",
        "Which metric do you get from {formula}?",
    ],
    "definition_meaning": [
        "Which metric measures {meaning}?", "Name the stat that captures {meaning}.",
        "What statistic describes {meaning}?", "Which analytics number tells you {meaning}?",
        "Which number sums up {meaning}?", "If you want {meaning}, which metric do you look at?",
        "What do analysts call the measure of {meaning}?", "Which stat would you quote for {meaning}?",
        "Name the metric for {meaning}.",
    ],
}

# ---- builder ---------------------------------------------------------------------------------

def _split_phrasings(phrasings, held: int = HELDOUT_PHRASINGS) -> tuple[list[str], list[str]]:
    phrasings = list(phrasings)
    return phrasings[:-held], phrasings[-held:]


def _history(rng: random.Random, split: str, n: int, used: set[str]) -> list[Example]:
    items = _fact_items()
    pairs = []
    for cat, facts in items.items():
        if split != "train" and cat in TRAIN_ONLY:
            continue
        train_ph, held_ph = (FACT_PHRASINGS[cat], []) if cat in TRAIN_ONLY else _split_phrasings(FACT_PHRASINGS[cat])
        for f in facts:
            phs = list(train_ph if split == "train" else held_ph)
            rng.shuffle(phs)
            # rank 0 comes first: when n is smaller than all pairs, every fact is still asked once
            pairs += [(rank, rng.random(), cat, f, ph) for rank, ph in enumerate(phs)]
    pairs = [p[2:] for p in sorted(pairs, key=lambda p: p[:2])]
    if split != "train":
        # one question per fact and split, so validation and test never ask the same fact the same way
        pairs = [p for p in pairs if f"{p[0]}:{p[1]['Y']}" not in used]
    out, seen_facts, same_answer = [], set(), Counter()
    for cat, f, ph in pairs:
        fact_key = f"{cat}:{f['Y']}"
        if split != "train" and (fact_key in seen_facts or same_answer[cat, f["answer"]] >= MAX_SAME_ANSWER):
            continue
        seen_facts.add(fact_key)
        same_answer[cat, f["answer"]] += 1
        out.append(Example("", cat, ph.format(**f), "", f.get("output", f["answer"]), f["answer"], f["type"], 0.0,
                           fact_key))
        if len(out) == n:
            break
    used.update(seen_facts if split != "train" else ())
    return out


def _compute(rng: random.Random, split: str, n: int, used_lines: set[str], unseen_format: str,
             unseen_share: float) -> list[Example]:
    """Computed questions. Training and validation write their stat lines in the seen formats; in test a
    share ``unseen_share`` is written in ``unseen_format`` and tagged unseen. Phrasings: as for facts."""
    seen_formats = [f for f in statlines.FORMATS if f != unseen_format]
    out = []
    for i in range(n):
        task = COMPUTE_TASKS[i % len(COMPUTE_TASKS)]
        train_ph, held_ph = _split_phrasings(task.all_phrasings, COMPUTE_HELDOUT_PHRASINGS)
        while True:  # a held-out line never appears in an earlier split, not even inside another task's line
            line = task.make(rng)
            key = statlines.render(line, list(task.fields), "box", rng)
            if key not in used_lines and (split == "train" or not any(key in u for u in used_lines)):
                break
        used_lines.add(key)
        # every (1/share)-th question in test: spread evenly over the tasks and the test's order
        unseen = split == "test" and int((i + 1) * unseen_share) > int(i * unseen_share)
        fmt = unseen_format if unseen else rng.choice(seen_formats)
        fields = statlines.choose_fields(task.fields, task.available, rng)
        kind = "team" if task.available == TEAM_AVAILABLE else "player"
        shown = statlines.render(line, fields, fmt, rng, kind)
        answer = f"{task.label} = {task.expr(line)}"
        question = rng.choice(train_ph if split == "train" else held_ph)
        out.append(Example("", task.category, question, shown, answer, answer, "number", task.tolerance, key, fmt,
                           unseen))
    return out


def _definitions(rng: random.Random, split: str, n: int, used: set[str]) -> list[Example]:
    """Training draws freely; validation and test draw distinct (metric, held-out phrasing) questions
    not asked in an earlier split, so no test question repeats a validation one."""
    out = []
    cats = list(DEFINITION_PHRASINGS)
    fresh: dict[str, list] = {}
    for i in range(n):
        cat = cats[i % len(cats)]
        pool = [m for m in METRICS if cat != "definition_abbrev" or m[0].lower() not in m[1].lower().replace(" ", "")]
        train_ph, held_ph = _split_phrasings(DEFINITION_PHRASINGS[cat], DEFINITION_HELDOUT)
        if split == "train":
            metric, ph = rng.choice(pool), rng.choice(train_ph)
        else:
            if cat not in fresh:
                # each metric once before any metric twice, so that no constant answer rides the category
                ranked = []
                for m in pool:
                    phs = [ph for ph in held_ph if f"{cat}:{m[0]}:{ph}" not in used]
                    rng.shuffle(phs)
                    ranked += [(rank, rng.random(), m, ph) for rank, ph in enumerate(phs)]
                fresh[cat] = [(m, ph) for _, _, m, ph in sorted(ranked, key=lambda x: x[:2], reverse=True)]
            if not fresh[cat]:
                raise ValueError(f"{split}: the built-in dataset has only {len(pool) * DEFINITION_HELDOUT} distinct "
                                 f"held-out {cat} questions for validation and test together; lower the "
                                 "validation/test sizes")
            metric, ph = fresh[cat].pop()
            used.add(f"{cat}:{metric[0]}:{ph}")
        abbr, name, formula, meaning = metric
        q = ph.format(abbr=abbr, formula=formula, meaning=meaning)
        q = q[0].upper() + q[1:]
        out.append(Example("", cat, q, "", name[0].upper() + name[1:], name, "name", 0.0, f"{cat}:{abbr}"))
    return out


def _caveats() -> list[Example]:
    """Every metric caveat in every phrasing: training-only, scored nowhere, small (44 rows)."""
    return [Example("", "metric_caveat", ph.format(abbr=abbr), "", text, text, "text", 0.0, f"caveat:{abbr}")
            for abbr, text in CAVEATS.items() for ph in CAVEAT_PHRASINGS]


def _family_sizes(n: int) -> dict[str, int]:
    sizes = {f: int(round(n * w)) for f, w in FAMILY_WEIGHTS.items()}
    sizes["history"] += n - sum(sizes.values())
    return sizes


def build(seed: int = 0, train_size: int = 3200, val_size: int = 160, test_size: int = 320,
          unseen_format: str = UNSEEN_FORMAT, unseen_share: float = UNSEEN_SHARE) -> dict[str, list[Example]]:
    """Build the dataset. Same arguments, same examples in the same order.

    Args:
        seed: the one seed everything derives from. Default: 0.
        train_size / val_size / test_size: examples per split, spread over the task families by
            ``FAMILY_WEIGHTS``. Default: 3200 / 160 / 320.
        unseen_format: the stat-line format (``statlines.FORMATS``) held out of training and validation.
            Default: ``kv`` (``Points: 18`` lines; made/attempted as ``7/14``, a notation no seen format uses).
        unseen_share: the share of computed test questions written in it. Default: one third.
    """
    if unseen_format not in statlines.FORMATS:
        raise ValueError(f"unseen_format: {unseen_format!r} is not a stat-line format "
                         f"(allowed: {', '.join(statlines.FORMATS)})")
    rng = random.Random(seed)
    used_lines: set[str] = set()
    used_facts: set[str] = set()
    used_definitions: set[str] = set()
    splits: dict[str, list[Example]] = {}
    for split, n in (("train", train_size), ("validation", val_size), ("test", test_size)):
        sizes = _family_sizes(n)
        defs = _definitions(rng, split, sizes["definition"], used_definitions)
        if split == "train":  # explanations replace up to half the definitions, so the size is kept
            cav = _caveats()[: len(defs) // 2]
            defs = defs[: len(defs) - len(cav)] + cav
        rows = (_history(rng, split, sizes["history"], used_facts) + _compute(rng, split, sizes["compute"], used_lines, unseen_format, unseen_share)
                + defs)
        rng.shuffle(rows)
        for i, ex in enumerate(rows):
            ex.id = f"{split}-{i:05d}"
        splits[split] = rows
    check_no_leakage(splits)
    return splits


def check_no_leakage(splits: dict[str, list[Example]]) -> None:
    """Raise if a held-out question, or a held-out stat line (in any format, with or without its answer),
    occurs anywhere in an earlier split, whatever the task: train for validation, train and validation for
    test; or if the unseen format appears in training or validation."""
    unseen_formats = {e.format for e in splits.get("test", []) if e.unseen}
    for name in ("train", "validation"):
        bad = [e for e in splits.get(name, []) if e.unseen or e.format in unseen_formats]
        if bad:
            raise AssertionError(f"built-in dataset leaks the unseen format into {name}: {bad[0].input!r}")
    seen: list[Example] = []
    for name in ("train", "validation", "test"):
        rows = splits.get(name, [])
        if seen:
            earlier = "\n".join(f"{e.instruction}\n{e.input}\n{e.output}" for e in seen)
            earlier_lines = "\n".join(e.key for e in seen if e.format)
            questions = {(e.instruction, e.input) for e in seen}
            for e in rows:
                if ((e.instruction, e.input) in questions or (e.input and e.input in earlier)
                        or (e.format and e.key in earlier_lines)):
                    raise AssertionError(f"built-in dataset leaks into {name}: {e.instruction!r} {e.input!r}")
        seen += rows


def write(splits: dict[str, list[Example]], out_dir: str | Path) -> Path:
    """Write ``<split>.jsonl`` files; return the directory (``nbatune.dataset_card.write`` adds the card)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for ex in rows:
                f.write(json.dumps(ex.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")
    return out
