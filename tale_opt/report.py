"""Human-readable views of a finished search."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROWS = (
    ("Baseline", "baseline"),
    ("Best", "best"),
    ("BSBA", "bsba"),
    ("AE-HM", "ae_hm"),
    ("Final", "final"),
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _speedup(cfg: Mapping[str, Any]) -> str:
    measured = cfg.get("speedup_measured")
    if measured is not None:
        return f"{measured:.2f}×"
    return f"~{cfg['speedup_estimate']:.2f}× (est.)"


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """A markdown table: one row per reported configuration, held-out columns last.

    Speed-up is measured end-to-end generate time where latency was measured, else the
    layer-count estimate L / (L - k), marked "est.".
    A perplexity-probe searcher (SLEB) ranks by perplexity on its probe text: its optimization
    column shows that perplexity; held-out columns are task accuracy for every searcher.
    """
    probe = summary.get("score_probe", "task_accuracy")
    if probe == "task_accuracy":
        opt_head, threshold = "opt acc %", f"{_pct(summary['threshold'])}%"

        def opt(score: float | None) -> str:
            return _pct(score)
    else:
        opt_head, threshold = f"opt {probe}", "-"

        def opt(score: float | None) -> str:
            return "-" if score is None else f"{-score:.2f}"

    head = (
        f"{summary.get('searcher', 'tale')} search — model {summary['model']} · task "
        f"{summary['task']} · scoring {summary['scoring']} · seed {summary['seed']}\n"
        f"baseline {opt(summary['baseline_accuracy'])}{'%' if opt_head.endswith('%') else ''} "
        f"on {summary['n_opt']} optimization examples · threshold {threshold} · "
        f"stop: {summary['stop_reason']}\n"
    )
    lines = [
        f"| config | layers dropped (0-based) | layers | {opt_head} | held-out acc % "
        "| held-out invalid % | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in ROWS:
        cfg = summary.get(key)
        if cfg is None:  # a summary written before this pick existed
            continue
        heldout = cfg.get("heldout", {})
        dropped = ",".join(str(i) for i in cfg["drop_layers"]) or "—"
        lines.append(
            f"| {label} | {dropped} | {cfg['n_layers']} | {opt(cfg['score'])} "
            f"| {_pct(heldout.get('accuracy'))} | {_pct(heldout.get('invalid_rate'))} "
            f"| {_speedup(cfg)} |"
        )
    foot = f"\nheld-out split: {summary['n_eval']} examples, never seen by the search"
    return head + "\n".join(lines) + foot
