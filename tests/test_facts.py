"""The bundled NBA facts against public Basketball-Reference tables.

The tables are internal reference material (not shipped); these tests skip, saying why, where the
folder is absent, as it is for users.
"""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

import pytest

from nbatune.data.facts import CHAMPIONS, FINALS_MVPS, MVPS

REF = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "nba"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason=f"reference tables not available at {REF}")


def _plain(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()


@needs_ref
def test_champions_opponents_and_series_results_match_the_reference():
    rows = list(csv.DictReader(open(REF / "champions_1947_2024__christevy2.csv", encoding="utf-8")))
    assert len(rows) == 78
    for r in rows:
        assert CHAMPIONS[int(r["season"])] == (r["champion"], r["runner_up"], r["result"]), r["season"]


@needs_ref
def test_champions_agree_with_the_playoff_series_table():
    finals = {}
    for row in csv.reader(open(REF / "bref_playoff_series_1947_2024__nford.csv", encoding="utf-8")):
        if len(row) > 10 and row[2] in ("NBA", "BAA") and row[3] == "Finals":
            finals[int(row[1])] = (row[6].split(" (")[0], row[9].split(" (")[0], f"{row[7]}-{row[10]}")
    assert len(finals) == 78
    for year, (winner, loser, result) in finals.items():
        assert CHAMPIONS[year] == (winner, loser, result), year


@needs_ref
def test_finals_mvps_match_the_reference():
    rows = list(csv.reader(open(REF / "bref_finals_mvp_1969_2024__nford.csv", encoding="utf-8")))[1:]
    assert len(rows) == 56
    for r in rows:
        assert FINALS_MVPS[int(r[1][:4]) + 1] == _plain(r[3]), r[1]


@needs_ref
def test_mvps_match_the_award_voting_table():
    winners = {int(r["season"]): _plain(r["player"])
               for r in csv.DictReader(open(REF / "bref_player_award_shares_1948_2025.csv", encoding="utf-8"))
               if r["award"] == "nba mvp" and r["winner"].upper() == "TRUE"}
    assert len(winners) == 70 and winners == MVPS


def test_coverage_runs_through_the_2024_25_season():
    assert min(CHAMPIONS) == 1947 and max(CHAMPIONS) == 2025 and len(CHAMPIONS) == 79
    assert sorted(FINALS_MVPS) == list(range(1969, 2026)) and sorted(MVPS) == list(range(1956, 2026))
    # 2025 is attested only in prose in the reference set: Oklahoma City over Indiana 4-3, SGA both MVPs
    assert CHAMPIONS[2025] == ("Oklahoma City Thunder", "Indiana Pacers", "4-3")

