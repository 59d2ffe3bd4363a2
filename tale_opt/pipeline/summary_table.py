"""Human-readable views of a finished search."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tale_opt.pipeline.outputs import opt_metrics
from tale_opt.pipeline.significance import round_sentence
from tale_opt.stats import accuracy_interval, format_accuracy, format_p

ROWS = (
    ("Baseline", "baseline"),
    ("Best", "best"),
    ("BSBA", "bsba"),
    ("AE-HM", "ae_hm"),
    ("Final", "final"),
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _with_interval(metrics: Mapping[str, Any], value: float | None) -> str:
    """``22.5 [17.3, 28.8]`` (percent, 95% interval) where the counts are known."""
    return format_accuracy(value, accuracy_interval(metrics) if value is not None else None)


def _versus(heldout: Mapping[str, Any]) -> tuple[str, str]:
    """The paired test's cells: ``+12/−5, p = 0.14`` and the verdict."""
    vs = heldout.get("vs_baseline")
    if not vs:
        return "—", "—"
    cell = f"+{vs['only_pick']}/−{vs['only_baseline']}, {format_p(vs['p_value'])}"
    return cell, str(vs["verdict"])


def _answers(heldout: Mapping[str, Any]) -> str:
    top, share = heldout.get("top_answer"), heldout.get("top_answer_share")
    return "-" if top is None or share is None else f"{top} {100 * share:.0f}%"


def _speedup(cfg: Mapping[str, Any]) -> str:
    """``1.02× measured``, or ``~1.03× estimated`` with the refused measurement, if any."""
    measured = cfg.get("speedup_measured")
    if measured is not None:
        return f"{measured:.2f}× measured"
    refused = (cfg.get("speedup_check") or {}).get("measured")
    why = "" if refused is None else f" (measured {refused:.2f}× not credible)"
    return f"~{cfg['speedup_estimate']:.2f}× estimated{why}"


def describe_probe_text(spec: Mapping[str, Any] | None) -> str:
    """What a text probe reads, for a line of prose: ``lambada, 32 documents``."""
    if not spec:
        return "its calibration text"
    source = spec.get("source")
    if source == "file":
        what = f"file {spec.get('path')}"
    elif source == "task":
        what = "the optimization split's questions with their gold answers"
    else:
        what = str(source)
    limit = spec.get("limit")
    return what if limit is None else f"{what}, {limit} documents"


def _chance(summary: Mapping[str, Any], split: str) -> str:
    chance = (summary.get("chance_accuracy") or {}).get(split)
    return "-" if chance is None else f"{100 * chance:.1f}%"


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """A markdown table: one row per reported configuration, held-out columns last, then the
    paired tests of the accepted rounds and any warning.

    Accuracies are percentages with their 95% Wilson interval. "vs Baseline" counts the
    held-out examples only the pick gets right (+) and only the Baseline gets right (−), with
    the exact McNemar p-value and its verdict at α = 0.05. "top answer" is the most frequent
    held-out answer and its share: near 100% the model answers one label whatever it is asked.
    Speed-up is the end-to-end generate time against the full model timed in the same loop,
    marked "measured", where latency was measured and the figure is physically possible;
    else the layer-count estimate L / (L - k), marked "estimated" (with the refused
    measurement, if there was one).
    A perplexity-probe searcher (SLEB) ranks by perplexity on its probe text: its optimization
    column shows that perplexity; held-out columns are task accuracy for every searcher.
    """
    probe = summary.get("score_probe", "task_accuracy")
    accuracy = probe == "task_accuracy"
    opt_head = "opt acc % [95% CI]" if accuracy else f"opt {probe}"
    # No threshold at all with n_drop=k (and for one-shot rankers): then say nothing.
    threshold = ""
    if accuracy and summary.get("threshold") is not None:
        threshold = f" · threshold {_pct(summary['threshold'])}%"

    def opt(cfg: Mapping[str, Any], unit: str = "") -> str:
        score = cfg.get("score")
        if not accuracy:
            return "-" if score is None else f"{-score:.2f}"
        interval = accuracy_interval(opt_metrics(cfg)) if score is not None else None
        return format_accuracy(score, interval, unit)

    baseline = summary.get("baseline") or {}
    opt_baseline = opt({**baseline, "score": summary["baseline_accuracy"]}, "%")
    if accuracy:
        where = (
            f"on {summary['n_opt']} optimization examples · chance "
            f"{_chance(summary, 'optimization')}"
        )
    else:  # a perplexity searcher ranks by its probe text, not by the task
        opt_baseline = f"{probe} {opt_baseline}"
        where = f"on the probe text ({describe_probe_text(summary.get('probe_text'))})"
    head = (
        f"{summary.get('searcher', 'tale')} search — model {summary['model']} · task "
        f"{summary['task']} · scoring {summary['scoring']} · seed {summary['seed']}\n"
        f"baseline {opt_baseline} {where}{threshold} · stop: {summary['stop_reason']}\n"
    )
    lines = [
        f"| config | layers dropped (0-based) | layers | {opt_head} | held-out acc % [95% CI] "
        "| vs Baseline (held-out) | verdict | invalid % | top answer | speed-up |",
        "|---|---|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for label, key in ROWS:
        cfg = summary.get(key)
        if cfg is None:  # a summary written before this pick existed
            continue
        heldout = cfg.get("heldout", {})
        dropped = ",".join(str(i) for i in cfg["drop_layers"]) or "—"
        versus, verdict = _versus(heldout)
        lines.append(
            f"| {label} | {dropped} | {cfg['n_layers']} | {opt(cfg)} "
            f"| {_with_interval(heldout, heldout.get('accuracy'))} | {versus} | {verdict} "
            f"| {_pct(heldout.get('invalid_rate'))} | {_answers(heldout)} | {_speedup(cfg)} |"
        )
    rounds = summary.get("rounds_vs_baseline") or []
    alpha = summary.get("alpha", 0.05)
    foot = []
    if rounds:
        foot.append(
            f"optimization split, accepted rounds vs Baseline (exact McNemar, α = {alpha}):"
        )
        foot += [f"  {round_sentence(test)}" for test in rounds]
    foot.append(
        f"held-out split: {summary['n_eval']} examples, never seen by the search · chance "
        f"{_chance(summary, 'heldout')} · 95% Wilson intervals · vs Baseline: examples only "
        f"the pick / only Baseline gets right, exact McNemar test, α = {alpha}"
    )
    foot += [f"WARNING: {w}" for w in summary.get("warnings") or []]
    return head + "\n".join(lines) + "\n" + "\n".join(foot)
