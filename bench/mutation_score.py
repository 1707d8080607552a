"""The mutation score of the last `mutmut run` (make mutation): per file, mutants killed by the fast tests,
survived, and not reached by any selected test; then the survivors, to read with `mutmut show NAME`.

    python bench/mutation_score.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path


def results() -> dict[str, str]:
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    status = {}
    for line in out.splitlines():
        name, sep, state = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            status[name] = state
    return status


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    status = results()
    by_file: dict[str, Counter] = defaultdict(Counter)
    for name, state in status.items():
        by_file[re.split(r"\.x[_ǁ]", name)[0]][state] += 1
    total = Counter(status.values())
    print("| module | mutants | killed | survived | no test | killed / reached |")
    print("|---|---:|---:|---:|---:|---:|")
    for mod, c in sorted(by_file.items()) + [("**all**", total)]:
        reached = c["killed"] + c["survived"] + c["timeout"]
        share = f"{(c['killed'] + c['timeout']) / reached:.1%}" if reached else "-"
        print(f"| {mod} | {sum(c.values())} | {c['killed']} | {c['survived']} | {c['no tests']} | {share} |")
    survivors = sorted(n for n, s in status.items() if s == "survived")
    if a.json:  # before the long list, which a pager or `head` may cut short
        Path(a.json).write_text(json.dumps({"by_file": by_file, "survivors": survivors}, indent=1, default=dict))
    print(f"\n{len(survivors)} survivors (mutmut show NAME):")
    for n in survivors:
        print("  " + n)


if __name__ == "__main__":
    main()
