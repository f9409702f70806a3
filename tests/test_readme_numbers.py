"""The README's statements about the committed results match the committed files.

Committed results are regenerated over several sessions; a README line that counts
runs or leaderboard entries goes stale silently. Each check reads the figure from
the README's own text and recomputes it from ``results/``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from analysis.leaderboard import ORACLE
from execution import store

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _statuses(name: str) -> dict[str, int]:
    """Runs per status of a committed results directory (a run's worst row status)."""
    frame = pd.read_csv(ROOT / "results" / name / "results.csv", usecols=["run_id", "status"],
                        low_memory=False)
    return frame.groupby("run_id")["status"].agg(lambda s: store.worst_status(set(s))) \
        .value_counts().to_dict()


@pytest.mark.parametrize("name", ["beyond", "nongaussian"])
def test_the_run_counts_the_readme_states_are_the_committed_ones(name):
    found = re.search(rf"`results/{name}/` — the `{name}` profile, \*\*complete\*\* "
                      r"\((\d+) runs: (\d+) ok, (\d+)\s+skipped", README)
    assert found, f"the README's line for results/{name} is not where this test reads it"
    total, ok, skipped = map(int, found.groups())
    statuses = _statuses(name)
    assert sum(statuses.values()) == total
    assert statuses.get("ok", 0) == ok and statuses.get("skipped", 0) == skipped


def test_the_rank_one_share_the_readme_states_is_the_committed_leaderboards():
    found = re.search(r"(\d+) % \((\d+) of the (\d+)\s+ranked entries; the other (\d+) are "
                      r"skips\), of which (\d+) are alone in their table and not\s+wins; of the "
                      r"(\d+) contested entries (\d+) are rank 1 \((\d+) %; (\d+) of (\d+), "
                      r"(\d+) %, without the\s+oracle", README)
    assert found, "the README's rank-1 share is not where this test reads it"
    (share, first, ranked, skips, alone, contested, first_c, share_c, first_wo, contested_wo,
     share_wo) = map(int, found.groups())
    board = pd.read_csv(ROOT / "results" / "leaderboard.csv")
    ranks = board.dropna(subset=["rank"])
    assert (len(ranks), int((ranks["rank"] == 1).sum())) == (ranked, first)
    assert len(board) - len(ranks) == skips and int((ranks["entries"] == 1).sum()) == alone
    duel = ranks[ranks["entries"] > 1]
    others = duel[duel["solver"] != ORACLE]
    assert (len(duel), int((duel["rank"] == 1).sum())) == (contested, first_c)
    assert (len(others), int((others["rank"] == 1).sum())) == (contested_wo, first_wo)
    assert [round(100 * a / b) for a, b in ((first, ranked), (first_c, contested),
                                            (first_wo, contested_wo))] == \
        [share, share_c, share_wo]
