"""Cost of a configuration: analytic FLOPs and measured latency / throughput.

`flops` and `workload` are pure arithmetic on a model config; `latency` and `bench` run the
model (torch, transformers). Layer indices are 0-based, as everywhere in tale_opt.
"""

from tale_opt.cost.flops import (
    FlopCount,
    ModelShape,
    count_flops,
    padded_lengths,
    tflops_for,
)
from tale_opt.cost.workload import evaluation_flops

__all__ = [
    "FlopCount",
    "ModelShape",
    "count_flops",
    "evaluation_flops",
    "padded_lengths",
    "tflops_for",
]
