"""How often does promotion let a worse model through, and how often does it promote a better
one? Exact figures, not a simulation.

    python benchmarks/promotion_power.py --out DIR [--sizes 100 500 2000] [--config FILE]
        [--set key=value ...]

Two models scored on the same n validation examples differ only on the examples exactly one
of them gets right: b (only the challenger) and c (only the champion), a trinomial draw with
probabilities p_b, p_c and 1 - p_b - p_c. Promotion's accuracy rule (components/promotion.py:
Tango's score interval, non-inferiority by ``promotion.max_accuracy_drop``) is a function of
(b, c, n) alone, so its chance of promoting is the sum of
the trinomial probabilities of the outcomes it promotes, computed exactly for every n and
disagreement rate d = p_b + p_c:

- at the margin: the challenger exactly ``max_accuracy_drop`` worse (p_b - p_c = -margin).
  ``false_promotion_rate_max`` is the largest such rate over n in {100, 500, 2000} and d in
  1-5%, for the rule as configured (nominal (1 - confidence) / 2 = 0.025 at 95%);
- the power to promote a challenger 1 point better at n = 500 (``power_plus_1pt_n500``: the
  smallest over d in 1-5%), and an equal one (p_b = p_c).

The rule is shown for the configured margin and for half of it. (``min_examples`` does not
change these rates: below it, a challenger that does not pass is left incomparable instead of
rejected; one that passes is promoted either way.) Writes DIR/promotion_power.json and
DIR/promotion_power.md. Half a minute of CPU.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from scipy.special import gammaln, xlogy

from components.config import PipelineConfig, PromotionConfig, load_config
from components.io import write_json, write_text
from components.promotion import min_examples
from components.stats import tango_statistic, two_sided_z
from flows.cli import script_parser

SIZES = (100, 500, 2000)
DISAGREEMENTS = (0.01, 0.02, 0.03, 0.04, 0.05)
BETTER = 0.01  # the challenger 1 point better, for the power


def promotion_rate(
    n: int, p_only_challenger: float, p_only_champion: float, policy: PromotionConfig
) -> float:
    """The exact chance that the accuracy rule promotes."""
    b = np.arange(n + 1)[:, None]
    c = np.arange(n + 1)[None, :]
    possible = b + c <= n
    rest = np.where(possible, n - b - c, 0)
    with np.errstate(divide="ignore", invalid="ignore"):  # xlogy(x > 0, 0) is -inf: p 0
        log_p = (
            gammaln(n + 1)
            - gammaln(b + 1)
            - gammaln(c + 1)
            - gammaln(rest + 1)
            + xlogy(b, p_only_challenger)
            + xlogy(c, p_only_champion)
            + xlogy(rest, 1 - p_only_challenger - p_only_champion)
        )
    probability = np.where(possible, np.exp(log_p), 0.0)
    passes = tango_statistic(-policy.max_accuracy_drop, b, c, n) >= two_sided_z(policy.confidence)
    return float(probability[passes & possible].sum())


def rates(policy: PromotionConfig, sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    margin = policy.max_accuracy_drop
    at_margin, power_better, power_equal = [], [], []
    for n in sizes:
        for d in DISAGREEMENTS:
            cell = {"n": n, "disagreement": d}
            if d >= margin:  # a challenger worse by the margin disagrees at least that often
                rate = promotion_rate(n, (d - margin) / 2, (d + margin) / 2, policy)
                at_margin.append(cell | {"rate": rate})
            if d >= BETTER:
                rate = promotion_rate(n, (d + BETTER) / 2, (d - BETTER) / 2, policy)
                power_better.append(cell | {"rate": rate})
            power_equal.append(cell | {"rate": promotion_rate(n, d / 2, d / 2, policy)})
    return {
        "max_accuracy_drop": margin,
        "confidence": policy.confidence,
        "nominal_rate": (1 - policy.confidence) / 2,
        "min_examples": min_examples(policy),
        "false_promotion_rate_max": max(r["rate"] for r in at_margin),
        "power_plus_1pt_n500": min(r["rate"] for r in power_better if r["n"] == 500),
        "at_margin": at_margin,
        "power_plus_1pt": power_better,
        "power_equal": power_equal,
    }


def _table(rows: list[dict[str, Any]], title: str, sizes: tuple[int, ...]) -> list[str]:
    lines = [
        f"{title}",
        "",
        "| n | " + " | ".join(f"d = {d:.0%}" for d in DISAGREEMENTS) + " |",
        "|---:|" + "---:|" * len(DISAGREEMENTS),
    ]
    for n in sizes:
        cells = []
        for d in DISAGREEMENTS:
            row = next((r for r in rows if r["n"] == n and r["disagreement"] == d), None)
            cells.append("-" if row is None else f"{row['rate']:.4f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args(argv)
    if 500 not in args.sizes:
        parser.error("--sizes must include 500 (power_plus_1pt_n500)")
    sizes = tuple(args.sizes)
    config: PipelineConfig = load_config(args.config, args.overrides)
    configured = config.promotion
    half = configured.model_copy(update={"max_accuracy_drop": configured.max_accuracy_drop / 2})
    report = {**rates(configured, sizes), "half_margin": rates(half, sizes)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "promotion_power.json", report)
    lines = [
        "# Promotion: false promotions and power, exact",
        "",
        "Each cell: the chance the accuracy rule promotes, computed exactly over every outcome "
        "of n paired examples whose two models disagree on a share d of them. Below "
        "`min_examples` a challenger that does not pass is left incomparable, not rejected. "
        "Written by `benchmarks/promotion_power.py`.",
        "",
    ]
    for label, r in (("configured", report), ("half the margin", report["half_margin"])):
        lines += [
            f"## Margin {r['max_accuracy_drop'] * 100:g} points ({label}): min_examples "
            f"{r['min_examples']}, nominal false-promotion rate {r['nominal_rate']:.3f}",
            "",
            f"False promotion at the margin, largest: **{r['false_promotion_rate_max']:.4f}**; "
            "power to promote a challenger 1 point better at n = 500, smallest over d: "
            f"**{r['power_plus_1pt_n500']:.3f}**.",
            "",
            *_table(r["at_margin"], "Challenger the margin worse (false promotion):", sizes),
            *_table(r["power_plus_1pt"], "Challenger 1 point better (power):", sizes),
            *_table(r["power_equal"], "Challenger as good as the champion:", sizes),
        ]
    write_text(args.out / "promotion_power.md", "\n".join(lines))
    print(
        f"false_promotion_rate_max {report['false_promotion_rate_max']:.4f}, "
        f"power_plus_1pt_n500 {report['power_plus_1pt_n500']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
