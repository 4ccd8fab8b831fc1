"""The estimator against published figures of real training runs (thrifty.cost.published).

Prints one table; exits non-zero when a checked row is outside its tolerance. Run it with
``make bench-estimates`` or ``.venv/bin/python benchmarks/estimates.py``.
"""

from __future__ import annotations

import sys

from thrifty.cost import prices
from thrifty.cost.published import checks


def main() -> int:
    rows = checks(prices.load(use_user_file=False))
    print("| figure | published | thrifty estimate | error | tolerance | verdict | source | inputs |")
    print("|---|---:|---:|---:|---:|---|---|---|")
    missed = 0
    for c in rows:
        verdict = ("ok" if c.ok else "MISSED") if c.checked else f"not checked: {c.note}"
        missed += c.checked and not c.ok
        print(f"| {c.what} | {c.published:.4g} {c.unit} | {c.estimate:.4g} {c.unit} | {c.error:+.1%} | "
              f"±{c.tolerance:.0%} | {verdict} | {c.source} | {c.inputs} |")
    print(f"\n{sum(c.checked for c in rows) - missed} of {sum(c.checked for c in rows)} checked rows "
          f"within tolerance")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
