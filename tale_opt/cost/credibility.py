"""Whether a measured speed-up can be believed, given how many layers were removed.

Removing k of L decoder layers removes at most k/L of a forward pass (the embeddings, the
final norm and the LM head stay), so the end-to-end speed-up has a physical ceiling of
L / (L - k); nor can removing layers make a model slower. A measurement outside
``[1 / (1 + tolerance), L / (L - k) · (1 + tolerance)]`` says more about the machine (another
job's load burst, frequency scaling, a cold cache) than about the configuration: 2.21× for
1 of 30 layers, whose ceiling is 1.034×, is noise. Such a measurement is refused and the
layer-count estimate L / (L - k) is used instead, saying so.

The speed-up checked is the one against the baseline timed in the same interleaved loop
(`tale_opt.cost.latency.paired_speedup`), so both sides saw the same machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SpeedupCheck:
    """A measured speed-up against its physical bounds.

    Attributes:
        measured: The median of the per-repeat ratios against the interleaved baseline.
        low, high: The lowest and highest per-repeat ratio (the spread of the repeats).
        ceiling: L / (L - k), what removing k of L layers can give at most.
        tolerance: Relative slack on both bounds for timing noise.
        credible: Whether `measured` lies within the bounds.
        reason: Why it is not credible (None when it is).
    """

    measured: float
    low: float
    high: float
    ceiling: float
    tolerance: float
    credible: bool
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_ceiling(num_layers: int, dropped: int) -> float:
    """L / (L - k): the largest end-to-end speed-up removing `dropped` of `num_layers` layers
    can give.

    Raises:
        ValueError: `dropped` is negative or not fewer than `num_layers`.
    """
    if not 0 <= dropped < num_layers:
        raise ValueError(
            f"`0 <= dropped < num_layers` must hold, but got dropped={dropped}, "
            f"num_layers={num_layers}"
        )
    return num_layers / (num_layers - dropped)


def check_speedup(
    measured: float,
    num_layers: int,
    dropped: int,
    *,
    tolerance: float = 0.1,
    spread: tuple[float, float] | None = None,
) -> SpeedupCheck:
    """Check a measured end-to-end speed-up of a model with `dropped` of `num_layers` decoder
    layers removed against ``[1 / (1 + tolerance), L / (L - k) · (1 + tolerance)]``.

    Args:
        measured: The speed-up (> 1 = faster), against a baseline timed in the same loop.
        num_layers: L, the full model's decoder layers.
        dropped: k, the layers removed.
        tolerance: Relative slack for timing noise (0.1 = 10 %).
        spread: The lowest and highest per-repeat speed-up (default: `measured` twice).

    Returns:
        The check, with the reason when the measurement is refused.
    """
    ceiling = layer_ceiling(num_layers, dropped)
    low, high = spread if spread is not None else (measured, measured)
    reason = None
    if measured > ceiling * (1 + tolerance):
        reason = (
            f"measured {measured:.2f}× is above the {ceiling:.3f}× that removing {dropped} of "
            f"{num_layers} layers can give (tolerance {tolerance:.0%})"
        )
    elif measured < 1 / (1 + tolerance):
        reason = (
            f"measured {measured:.2f}× is slower than the full model, which removing layers "
            f"cannot make it (tolerance {tolerance:.0%})"
        )
    return SpeedupCheck(measured, low, high, ceiling, tolerance, reason is None, reason)
