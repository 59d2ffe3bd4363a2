"""Which accepted configuration to report: Best, BSBA and the AE-HM compromise (paper, App. J)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tale_opt.types import Observation


def pick_best(trajectory: Sequence[Observation]) -> Observation:
    """Highest score; on a tie the configuration with more layers dropped (smaller, same score)."""
    if not trajectory:
        raise ValueError("pick_best needs at least one accepted configuration")
    return max(trajectory, key=lambda obs: (obs.score, len(obs.drop)))


def pick_bsba(trajectory: Sequence[Observation], baseline_score: float) -> Observation:
    """Best Speed-up at Baseline Accuracy: most layers dropped with score >= baseline.

    The baseline itself (nothing dropped) always qualifies, so there is always an answer.
    """
    at_baseline = [obs for obs in trajectory if obs.score >= baseline_score]
    if not at_baseline:
        raise ValueError("the trajectory must contain the baseline configuration")
    return max(at_baseline, key=lambda obs: (len(obs.drop), obs.score))


def ae_hm(accuracy_ratio: float, speedup: float, lam: float) -> float:
    """Accuracy-Efficiency Harmonic Mean: (1+λ²)·r_A·S / (λ²·S + r_A); λ>1 favours accuracy."""
    if lam <= 0:
        raise ValueError(f"`lam > 0` must hold, but got lam={lam}")
    if accuracy_ratio <= 0 or speedup <= 0:
        return 0.0
    lam2 = lam * lam
    return (1 + lam2) * accuracy_ratio * speedup / (lam2 * speedup + accuracy_ratio)


def layer_count_speedup(num_layers: int) -> Callable[[Observation], float]:
    """Speed-up estimate L / (L - k) for k dropped decoder layers.

    An upper bound on the real speed-up (embedding and LM head are not removed); used for the
    AE-HM pick until measured latency is available for a configuration.
    """

    def speedup(obs: Observation) -> float:
        return num_layers / (num_layers - len(obs.drop))

    return speedup


def pick_ae_hm(
    trajectory: Sequence[Observation],
    baseline_score: float,
    lam: float,
    speedup: Callable[[Observation], float],
) -> Observation:
    """Argmax of AE-HM over accepted configurations; ties go to the earlier one."""
    if baseline_score <= 0:
        # r_A is undefined; the only safe pick is the unpruned model.
        return min(trajectory, key=lambda obs: len(obs.drop))
    return max(
        trajectory,
        key=lambda obs: (ae_hm(obs.score / baseline_score, speedup(obs), lam), -len(obs.drop)),
    )
