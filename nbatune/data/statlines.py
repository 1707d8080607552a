"""Stat lines in the forms analysts write them: box-score notation, a game-recap sentence, a markdown
table row, a CSV row with its header, and ``key: value`` lines. Fields come in varied order (prose keeps
a recap's natural order), sometimes with fields the formula does not need.

``parse`` reads any of them back into the same field values; the tests render every line of the built
dataset in every format and parse it back, so a format the model is asked to read is one that states
the numbers unambiguously.
"""

from __future__ import annotations

import csv
import io
import random
import re

FORMATS = ("box", "prose", "table", "csv", "kv")

# field -> (box label, table/CSV headers, key:value names): made-attempted fields have two numbers.
# Values are read from the line objects of analytics.py by ``values``.
PAIRS = {"fg": ("FG", ("FGM", "FGA"), "Field goals"), "3p": ("3P", ("3PM", "3PA"), "Three-pointers"),
         "ft": ("FT", ("FTM", "FTA"), "Free throws")}
SINGLES = {"min": ("MIN", "MIN", "Minutes"), "pts": ("PTS", "PTS", "Points"), "oreb": ("OREB", "OREB", "Offensive rebounds"),
           "dreb": ("DREB", "DREB", "Defensive rebounds"), "ast": ("AST", "AST", "Assists"),
           "stl": ("STL", "STL", "Steals"), "blk": ("BLK", "BLK", "Blocks"), "tov": ("TOV", "TOV", "Turnovers"),
           "pf": ("PF", "PF", "Personal fouls"), "opp": ("OPP PTS", "OPP PTS", "Opponent points"),
           "tmin": ("team MIN", "Team MIN", "Team minutes")}
RECORD = {"record": ("record", ("W", "L"), ("Wins", "Losses"))}

# How a recap says each field (player or team); the order here is a recap's order.
PROSE = {
    "min": "{0} minutes", "pts": "{0} points", "fg": "{0}-of-{1} shooting from the field",
    "3p": "{0}-of-{1} from three", "ft": "{0}-for-{1} at the line", "oreb": "{0} offensive rebounds",
    "dreb": "{0} defensive rebounds", "ast": "{0} assists", "stl": "{0} steals", "blk": "{0} blocks",
    "tov": "{0} turnovers", "pf": "{0} personal fouls", "opp": "{0} points allowed",
    "tmin": "{0} team minutes played",
}
PROSE_ORDER = ("min", "pts", "fg", "3p", "ft", "oreb", "dreb", "ast", "stl", "blk", "tov", "pf", "opp", "tmin")
PROSE_OPENINGS = {"player": ("He finished with", "She put up", "Last night's line:", "The player had",
                             "He ended the game with", "Her night:"),
                  "team": ("The team finished with", "They put up", "Team totals:", "The club had",
                           "The final team line:", "They ended the night with")}


def values(line, field: str) -> tuple[int, ...]:
    """The numbers of one field of a PlayerLine, TeamGame or TeamSeason."""
    get = {"min": lambda: (line.minutes,), "tmin": lambda: (line.minutes,), "pts": lambda: (line.pts,),
           "fg": lambda: (line.fgm, line.fga), "3p": lambda: (line.tpm, line.tpa), "ft": lambda: (line.ftm, line.fta),
           "oreb": lambda: (line.orb,), "dreb": lambda: (line.drb,), "ast": lambda: (line.ast,),
           "stl": lambda: (line.stl,), "blk": lambda: (line.blk,), "tov": lambda: (line.tov,), "pf": lambda: (line.pf,),
           "opp": lambda: (line.opp_pts,), "record": lambda: (line.wins, line.losses)}
    return get[field]()


def choose_fields(need: tuple[str, ...], available: tuple[str, ...], rng: random.Random) -> list[str]:
    """The fields to show: every one the formula needs, in shuffled order, and with probability one half
    one or two it does not need (an analyst pastes the whole line, not the formula's inputs)."""
    fields = list(need)
    spare = [f for f in available if f not in need]
    if spare and rng.random() < 0.5:
        fields += rng.sample(spare, min(len(spare), rng.choice((1, 2))))
    rng.shuffle(fields)
    return fields


def render(line, fields: list[str], fmt: str, rng: random.Random, kind: str = "player") -> str:
    """``line``'s ``fields`` in format ``fmt`` (one of FORMATS)."""
    if fmt == "box":
        return ", ".join(_box(f, values(line, f)) for f in fields)
    if fmt in ("table", "csv"):
        heads, cells = [], []
        for f in fields:
            heads += _headers(f)
            cells += [str(v) for v in values(line, f)]
        if fmt == "csv":
            return ",".join(heads) + "\n" + ",".join(cells)
        return "| " + " | ".join(heads) + " |\n|" + "---|" * len(heads) + "\n| " + " | ".join(cells) + " |"
    if fmt == "kv":
        out = []
        for f in fields:
            v = values(line, f)
            if f == "record":
                out += [f"Wins: {v[0]}", f"Losses: {v[1]}"]
            else:
                name = (PAIRS.get(f) or SINGLES[f])[2]
                out.append(f"{name}: " + "/".join(map(str, v)))
        return "\n".join(out)
    if fmt == "prose":
        if fields == ["record"]:
            w, l = values(line, "record")
            return rng.choice(("The team is {0}-{1} so far.", "They have won {0} games and lost {1}.",
                               "Their record stands at {0} wins and {1} losses.")).format(w, l)
        parts = [PROSE[f].format(*values(line, f)) for f in sorted(fields, key=PROSE_ORDER.index)]
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{rng.choice(PROSE_OPENINGS[kind])} {body}."
    raise ValueError(f"unknown stat-line format {fmt!r} (allowed: {', '.join(FORMATS)})")


def _box(field: str, v: tuple[int, ...]) -> str:
    if field == "record":
        return f"{v[0]}-{v[1]} record"
    if field in PAIRS:
        return f"{v[0]}-{v[1]} {PAIRS[field][0]}"
    return f"{v[0]} {SINGLES[field][0]}"


def _headers(field: str) -> list[str]:
    if field == "record":
        return list(RECORD["record"][1])
    return list(PAIRS[field][1]) if field in PAIRS else [SINGLES[field][1]]


def parse(text: str, fmt: str) -> dict[str, tuple[int, ...]]:
    """The fields stated in ``text`` (format ``fmt``): ``{field: numbers}``, the inverse of ``render``."""
    if fmt == "box":
        out = {}
        for chunk in text.split(", "):
            m = re.fullmatch(r"(\d+)-(\d+) (FG|3P|FT|record)", chunk)
            if m:
                key = next((f for f, p in PAIRS.items() if p[0] == m[3]), "record")
                out[key] = (int(m[1]), int(m[2]))
                continue
            num, label = re.fullmatch(r"(\d+) (.+)", chunk).groups()
            out[next(f for f, s in SINGLES.items() if s[0] == label)] = (int(num),)
        return out
    if fmt in ("table", "csv"):
        if fmt == "csv":
            heads, cells = list(csv.reader(io.StringIO(text)))
        else:
            rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in text.splitlines()]
            heads, cells = rows[0], rows[2]
        col = dict(zip(heads, map(int, cells)))
        out = {f: tuple(col[h] for h in p[1]) for f, p in PAIRS.items() if p[1][0] in col}
        out |= {f: (col[s[1]],) for f, s in SINGLES.items() if s[1] in col}
        if "W" in col:
            out["record"] = (col["W"], col["L"])
        return out
    if fmt == "kv":
        kv = dict(line.split(": ", 1) for line in text.splitlines())
        out = {f: tuple(map(int, kv[p[2]].split("/"))) for f, p in PAIRS.items() if p[2] in kv}
        out |= {f: (int(kv[s[2]]),) for f, s in SINGLES.items() if s[2] in kv}
        if "Wins" in kv:
            out["record"] = (int(kv["Wins"]), int(kv["Losses"]))
        return out
    if fmt == "prose":
        m = re.search(r"(\d+)-(\d+) so far|won (\d+) games and lost (\d+)|at (\d+) wins and (\d+) losses", text)
        if m:
            w, l = (int(g) for g in m.groups() if g is not None)
            return {"record": (w, l)}
        out = {}
        for f, phrase in PROSE.items():
            pattern = re.escape(phrase).replace(r"\{0\}", r"(\d+)").replace(r"\{1\}", r"(\d+)")
            hit = re.search(r"(?:^|[ :,])" + pattern + r"(?=[,.]| and )", text)
            if hit:
                out[f] = tuple(int(g) for g in hit.groups())
        return out
    raise ValueError(f"unknown stat-line format {fmt!r} (allowed: {', '.join(FORMATS)})")
