"""The rule that picks a LoRA rank from fine-tuning results (a pure function of a table).

Rule, with a tolerance of ``T`` accuracy points (default 1):

1. The reference is the accuracy of full fine-tuning (every weight trained) when it is
   in the table; the chosen rank is the **smallest rank whose accuracy is within T
   points of full fine-tuning's**: nothing cheaper is as good, within T.
2. When no rank comes within T points of full fine-tuning (a frozen base cannot match
   it), or there is no full fine-tuning row, the reference is the best LoRA rank's
   accuracy instead: the smallest rank within T points of the best rank (beyond it, more
   trainable parameters buy less than T points).

Ties cannot arise (ranks are distinct); the cost of a rank is its trainable parameters
and time, which grow with it, so "smallest" is "cheapest". Accuracies are fractions in
[0, 1]; the caller decides which accuracy (``lowrank finetune`` uses the validation
split's, so the test set plays no part in the choice).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["LoRARankChoice", "choose_lora_rank", "DEFAULT_TOLERANCE"]

#: Accuracy points a chosen rank may lose against the reference.
DEFAULT_TOLERANCE = 1.0


@dataclass(frozen=True)
class LoRARankChoice:
    """The rank :func:`choose_lora_rank` picked and why."""

    rank: int
    accuracy: float
    """The chosen rank's accuracy."""
    reference: float
    """The accuracy it was held against."""
    reference_name: str
    """``"full fine-tuning"`` or ``"best LoRA rank (r=...)"``."""
    tolerance: float
    """In accuracy points."""
    reason: str
    """One sentence: the rule as applied."""


def choose_lora_rank(accuracy: Mapping[int, float], full: float | None = None,
                     tolerance: float = DEFAULT_TOLERANCE) -> LoRARankChoice:
    """The rank the module's rule picks from ``{rank: accuracy}`` and full fine-tuning's accuracy."""
    if not accuracy:
        raise ConfigError("no LoRA results to choose a rank from: train at least one rank")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance >= 0:
        raise ConfigError(f"tolerance must be a number of accuracy points >= 0, got {tolerance!r}")
    ranks = sorted(accuracy)
    tol = tolerance / 100.0
    if full is not None:
        within = [r for r in ranks if accuracy[r] >= full - tol]
        if within:
            r = within[0]
            return LoRARankChoice(r, accuracy[r], full, "full fine-tuning", tolerance,
                                  f"r={r} is the smallest rank within {tolerance:g} points of full fine-tuning "
                                  f"({100 * accuracy[r]:.2f}% vs {100 * full:.2f}%)")
    best = max(ranks, key=lambda k: (accuracy[k], -k))
    r = next(k for k in ranks if accuracy[k] >= accuracy[best] - tol)
    lead = (f"no rank comes within {tolerance:g} points of full fine-tuning ({100 * full:.2f}%); "
            if full is not None else "")
    return LoRARankChoice(r, accuracy[r], accuracy[best], f"best LoRA rank (r={best})", tolerance,
                          f"{lead}r={r} is the smallest rank within {tolerance:g} points of the best rank r={best} "
                          f"({100 * accuracy[r]:.2f}% vs {100 * accuracy[best]:.2f}%)")
