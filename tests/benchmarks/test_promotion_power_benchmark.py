"""The promotion benchmark's exact rates are the rates of the rule the pipeline applies: checked
against the rule itself on simulated pairs of models, and its figures written as named."""

import json
from pathlib import Path

import numpy as np
import pytest

from components.config import PromotionConfig
from components.stats import paired_difference
from tests.helpers import benchmark


def test_the_exact_rate_is_the_rate_of_the_pipelines_own_rule() -> None:
    module = benchmark("promotion_power")
    policy = PromotionConfig(max_accuracy_drop=0.05)
    n, p_only_challenger, p_only_champion = 120, 0.045, 0.075  # 3 points worse, 12% disagree
    exact = module.promotion_rate(n, p_only_challenger, p_only_champion, policy)
    rng = np.random.default_rng(0)
    draws = 1500
    promoted = 0
    probabilities = [p_only_challenger, p_only_champion, 1 - p_only_challenger - p_only_champion]
    for only_challenger, only_champion, _ in rng.multinomial(n, probabilities, size=draws):
        challenger = np.zeros(n, bool)
        champion = np.zeros(n, bool)
        challenger[:only_challenger] = True
        champion[only_challenger : only_challenger + only_champion] = True
        lo, _ = paired_difference(challenger, champion, policy.confidence).interval
        promoted += lo >= -policy.max_accuracy_drop
    standard_error = np.sqrt(exact * (1 - exact) / draws)
    assert 0.05 < exact < 0.6  # a cell where the rule is uncertain, not trivially 0 or 1
    assert abs(promoted / draws - exact) < 4 * standard_error


@pytest.mark.slow
def test_the_benchmark_writes_the_rates_the_checks_read(tmp_path: Path) -> None:
    assert benchmark("promotion_power").main(["--out", str(tmp_path), "--sizes", "100", "500"]) == 0
    report = json.loads((tmp_path / "promotion_power.json").read_text())
    assert 0 < report["false_promotion_rate_max"] <= 0.03  # nominal 0.025
    assert report["power_plus_1pt_n500"] > 0.3
    assert {r["n"] for r in report["at_margin"]} == {100, 500}
    assert "False promotion at the margin" in (tmp_path / "promotion_power.md").read_text()
