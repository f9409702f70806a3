"""Analysis: results to answers — summaries (aggregate), the leaderboard, the regression gate
(compare) and the report (its sections, document and figures).
May import execution (the store, the registry, timings) and the layers below it; never cli."""
