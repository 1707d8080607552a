"""Basketball analytics formulas and realistic, internally consistent stat lines.

Each formula is the textbook one (Basketball-Reference glossary / Dean Oliver / John Hollinger) and
the exact same function produces the dataset answer, so tests can recompute every answer from its
stat line independently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


PLAYER_FIELDS = ("min", "pts", "fg", "3p", "ft", "oreb", "dreb", "ast", "stl", "blk", "tov", "pf")
TEAM_FIELDS = ("pts", "fg", "3p", "ft", "oreb", "tov", "opp", "min")


@dataclass(frozen=True)
class PlayerLine:
    """One player's box-score line for a game. Invariants: made <= attempted, 3PM <= FGM,
    PTS = 2*FGM + 3PM + FTM."""

    minutes: int
    fgm: int
    fga: int
    tpm: int
    tpa: int
    ftm: int
    fta: int
    orb: int
    drb: int
    ast: int
    stl: int
    blk: int
    tov: int
    pf: int

    @property
    def pts(self) -> int:
        return 2 * self.fgm + self.tpm + self.ftm

    def text(self, fields: tuple[str, ...] = PLAYER_FIELDS) -> str:
        """The line in box-score notation, limited to ``fields`` (every digit costs a token)."""
        parts = {
            "min": f"{self.minutes} MIN", "pts": f"{self.pts} PTS", "fg": f"{self.fgm}-{self.fga} FG",
            "3p": f"{self.tpm}-{self.tpa} 3P", "ft": f"{self.ftm}-{self.fta} FT", "oreb": f"{self.orb} OREB",
            "dreb": f"{self.drb} DREB", "ast": f"{self.ast} AST", "stl": f"{self.stl} STL", "blk": f"{self.blk} BLK",
            "tov": f"{self.tov} TOV", "pf": f"{self.pf} PF",
        }
        return ", ".join(parts[f] for f in fields)


@dataclass(frozen=True)
class TeamGame:
    """A team's totals for one game, with the opponent's points. ``minutes`` is team minutes
    (240 for regulation, +25 per overtime)."""

    fgm: int
    fga: int
    tpm: int
    tpa: int
    ftm: int
    fta: int
    orb: int
    tov: int
    opp_pts: int
    minutes: int = 240

    @property
    def pts(self) -> int:
        return 2 * self.fgm + self.tpm + self.ftm

    def text(self, fields: tuple[str, ...] = TEAM_FIELDS) -> str:
        parts = {
            "pts": f"{self.pts} PTS", "fg": f"{self.fgm}-{self.fga} FG", "3p": f"{self.tpm}-{self.tpa} 3P",
            "ft": f"{self.ftm}-{self.fta} FT", "oreb": f"{self.orb} OREB", "tov": f"{self.tov} TOV",
            "opp": f"{self.opp_pts} OPP PTS", "min": f"{self.minutes} team MIN",
        }
        return ", ".join(parts[f] for f in fields)


@dataclass(frozen=True)
class TeamSeason:
    wins: int
    losses: int
    pts: int
    opp_pts: int

    def text(self, fields: tuple[str, ...] = ("record", "points")) -> str:
        parts = {"record": f"{self.wins}-{self.losses} record",
                 "points": f"{self.pts} points scored, {self.opp_pts} points allowed"}
        return ", ".join(parts[f] for f in fields)


# ---- player formulas -------------------------------------------------------------------------

def true_shooting_pct(p: PlayerLine) -> float:
    return 100 * p.pts / (2 * (p.fga + 0.44 * p.fta))


def effective_fg_pct(p: PlayerLine) -> float:
    return 100 * (p.fgm + 0.5 * p.tpm) / p.fga


def points_per_shot(p: PlayerLine) -> float:
    return p.pts / p.fga


def assist_to_turnover(p: PlayerLine) -> float:
    return p.ast / p.tov


def game_score(p: PlayerLine) -> float:
    return (p.pts + 0.4 * p.fgm - 0.7 * p.fga - 0.4 * (p.fta - p.ftm) + 0.7 * p.orb + 0.3 * p.drb
            + p.stl + 0.7 * p.ast + 0.7 * p.blk - 0.4 * p.pf - p.tov)


# ---- team formulas ---------------------------------------------------------------------------

def possessions(t: TeamGame) -> float:
    return t.fga - t.orb + t.tov + 0.44 * t.fta


def offensive_rating(t: TeamGame) -> float:
    return 100 * t.pts / possessions(t)


def defensive_rating(t: TeamGame) -> float:
    # One-sided estimate: both teams have (nearly) the same number of possessions in a game.
    return 100 * t.opp_pts / possessions(t)


def net_rating(t: TeamGame) -> float:
    return offensive_rating(t) - defensive_rating(t)


def pace(t: TeamGame) -> float:
    return 48 * possessions(t) / (t.minutes / 5)


def win_pct(s: TeamSeason) -> float:
    return s.wins / (s.wins + s.losses)


def pythagorean_wins(s: TeamSeason, exponent: float = 14.0) -> float:
    games = s.wins + s.losses
    return games * s.pts**exponent / (s.pts**exponent + s.opp_pts**exponent)


# ---- generators ------------------------------------------------------------------------------

def random_player_line(rng: random.Random) -> PlayerLine:
    minutes = rng.randint(18, 40)
    fga = max(4, round(rng.gauss(minutes * 0.45, 3)))
    tpa = min(fga, max(0, round(fga * rng.uniform(0.1, 0.55))))
    tpm = sum(rng.random() < 0.36 for _ in range(tpa))
    two_a = fga - tpa
    two_m = sum(rng.random() < 0.53 for _ in range(two_a))
    fta = max(0, round(rng.gauss(minutes * 0.15, 2)))
    ftm = sum(rng.random() < 0.78 for _ in range(fta))
    return PlayerLine(
        minutes=minutes, fgm=two_m + tpm, fga=fga, tpm=tpm, tpa=tpa, ftm=ftm, fta=fta,
        orb=rng.randint(0, 4), drb=rng.randint(1, 10), ast=rng.randint(0, 11), stl=rng.randint(0, 3),
        blk=rng.randint(0, 3), tov=rng.randint(1, 6), pf=rng.randint(0, 5),
    )


def random_team_game(rng: random.Random) -> TeamGame:
    overtimes = 1 if rng.random() < 0.06 else 0
    fga = rng.randint(80, 96) + 5 * overtimes
    tpa = rng.randint(28, 46)
    tpm = sum(rng.random() < 0.36 for _ in range(tpa))
    two_m = sum(rng.random() < 0.54 for _ in range(fga - tpa))
    fta = rng.randint(14, 30)
    ftm = sum(rng.random() < 0.78 for _ in range(fta))
    pts = 2 * (two_m + tpm) + tpm + ftm
    return TeamGame(fgm=two_m + tpm, fga=fga, tpm=tpm, tpa=tpa, ftm=ftm, fta=fta, orb=rng.randint(6, 15),
                    tov=rng.randint(9, 18), opp_pts=max(80, pts + rng.randint(-18, 18)),
                    minutes=240 + 25 * overtimes)


def random_partial_record(rng: random.Random) -> TeamSeason:
    """A record part-way through a season (points are not shown with it)."""
    games = rng.randint(10, 82)
    wins = sum(rng.random() < rng.uniform(0.2, 0.8) for _ in range(games))
    return TeamSeason(wins=wins, losses=games - wins, pts=0, opp_pts=0)


def random_team_season(rng: random.Random) -> TeamSeason:
    wins = rng.randint(15, 67)
    ppg = rng.uniform(106, 120)
    margin = (wins - 41) * 0.33 + rng.gauss(0, 1.2)
    return TeamSeason(wins=wins, losses=82 - wins, pts=round(ppg * 82), opp_pts=round((ppg - margin) * 82))
