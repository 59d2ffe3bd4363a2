"""The files of an `analyze mi` job: mi.json (everything), mi.md (the table), mi.png (the
figure). mi.json is written last, so a directory with it holds a finished analysis."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tale_opt.pipeline.outputs import write_json_atomic, write_text_atomic

RECORD = "mi.json"


def format_mi_table(record: Mapping[str, Any]) -> str:
    """Per layer, each configuration's MINE and linear-probe estimates (mean ± sd, bits)."""
    configs = record["configurations"]
    settings = record["settings"]
    mine = settings["mine"]
    head = [
        f"tale analyze mi — model {record['model']} · task {record['task']} "
        f"({record['scoring']}, {record['fewshot']}-shot) · target {record['target']}",
        f"{record['examples']}, {record['n_questions']} analyzed"
        + (
            f" (with {record['options']} options; {record['left_out']} left out)"
            if record["target"] == "choice"
            else ""
        )
        + f"; H(Y) = {record['label_entropy_bits']:.3f} bits (the most any layer can hold)",
        "",
    ]
    columns = " | ".join(f"{c['label']}: MINE | {c['label']}: probe" for c in configs)
    lines = [f"| layer | {columns} |", "|---:|" + "---:|" * (2 * len(configs))]
    rows = {c["label"]: {r["layer"]: r for r in c["layers"]} for c in configs}
    for layer in range(record["num_layers"]):
        cells = []
        for config in configs:
            row = rows[config["label"]].get(layer)
            if row is None:
                cells += ["dropped", "dropped"]
                continue
            cells += [_cell(row["mine"]), _cell(row["probe"])]
        lines.append(f"| {layer} | {' | '.join(cells)} |")
    choice = (
        " Target choice: X is every option's output, Y the gold option; each option is scored "
        "by one shared function, compared within the question (MINE: T(x, y) = g(x_y) - "
        "log sum_j exp g(x_j) + b_y; probe: conditional logit)."
    )
    foot = [
        "",
        f"bits, mean ± sd over {settings['seeds']} seeds; each seed holds out "
        f"{settings['test_fraction']:.0%} of the questions and every estimate is measured on "
        "them. Layer outputs (before the final norm) are standardized and projected on their "
        f"first {settings['features']} principal components (fitted on the training questions)."
        + (choice if record["target"] == "choice" else ""),
        f"MINE: statistics network with 2 hidden layers of {mine['hidden']} (ELU), Adam lr "
        f"{mine['lr']}, {mine['steps']} steps of {mine['batch']} questions, weight decay "
        f"{mine['weight_decay']}, moving-average gradient correction (rate {mine['ema']}), "
        f"early stopping on {mine['validation']:.0%} of the training questions every "
        f"{mine['check']} steps; Donsker-Varadhan bound on the held-out questions.",
        "linear probe: multinomial logistic regression, L2 strength by 5-fold cross-validation "
        f"over {settings['l2_grid']}; bound H(Y) − cross-entropy on the held-out questions.",
        "A negative estimate: the fitted function does worse on new questions than the label "
        "frequencies alone, i.e. nothing found.",
    ]
    return "\n".join(head + lines + foot)


def _cell(spread: Mapping[str, Any]) -> str:
    return f"{spread['mean']:.3f} ± {spread['sd']:.3f}"


def write_mi(record: Mapping[str, Any], out: Path) -> tuple[Path, str]:
    """Write mi.md, mi.png and mi.json into `out`; returns mi.json's path and the table."""
    from tale_opt.reporting.mi_plot import plot_mi

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_mi_table(record)
    write_text_atomic(out / "mi.md", table + "\n")
    plot_mi(record, out / "mi.png")
    path = out / RECORD
    write_json_atomic(path, dict(record))
    return path, table
