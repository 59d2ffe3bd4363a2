"""Command line: `python -m tale_opt [overrides]` runs a search; `python -m tale_opt
<subcommand> ...` runs another command. One module per command, each with `main(argv)`:

    search   (the default) a Hydra app over the config groups in tale_opt/conf/
    worker   joins a running search (composes conf/worker.yaml)
    workers  submits N workers at once: a Slurm job array, or local processes (submitit)
    export   writes a pruned checkpoint
    bench    latency, throughput and TFLOPs of pruned variants
    report   compares searches logged to MLflow
    evaluate scores a model, a drop set or a search's picks on held-out splits (transfer)
    finetune LoRA fine-tuning of a search's pick, an exported checkpoint or the full model
    pipeline baseline, TALE, FT, TALE → FT, FT → TALE, TALE → FT → TALE: one table
    analyze  mi: mutual information between each layer's output and the answer (model, pick)

Bad input -- an unknown group choice or key, a missing path, a malformed data file, an
invalid value, an unwritable run directory -- prints one `error:` line naming the problem and
the fix and exits with code 2; a search that fails while running exits with 1, Ctrl-C with 130
(one line each); `debug=true` shows the traceback instead. A run that fails before doing any
work leaves no run directory behind.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Sequence

from tale_opt.errors import UsageError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
DEFAULT = "tale_opt.commands.search"
# Subcommand name -> module with `main(argv)`; anything else is a search's Hydra overrides.
SUBCOMMANDS = {
    "worker": "tale_opt.commands.worker",
    "workers": "tale_opt.commands.workers",
    "export": "tale_opt.commands.export",
    "bench": "tale_opt.commands.bench",
    "report": "tale_opt.commands.report",
    "evaluate": "tale_opt.commands.evaluate",
    "finetune": "tale_opt.commands.finetune",
    "pipeline": "tale_opt.commands.pipeline",
    "analyze": "tale_opt.commands.analyze",
}
# One line each for `python -m tale_opt --help`, in the order of SUBCOMMANDS.
SUMMARIES = {
    "worker": "join a running search and evaluate its candidates (any machine)",
    "workers": "submit N workers at once (a Slurm job array through submitit, or locally)",
    "export": "write the pruned checkpoint of a search's pick (plain transformers)",
    "bench": "latency, throughput and TFLOPs of a model and its pruned variants",
    "report": "compare searches logged to MLflow (tables and plots)",
    "evaluate": "score a model, a drop set or a search's picks on held-out splits",
    "finetune": "LoRA fine-tuning of a search's pick, a checkpoint or the full model",
    "pipeline": "baseline, TALE, FT and their orders in one table (the paper's Table 1)",
    "analyze": "mi: mutual information between each layer's output and the answer",
}
# What Ctrl-C leaves behind and how to go on, per command (None: the search).
RESUME = {
    None: "the same command resumes the search (finished candidates are kept)",
    "worker": "its candidate goes back to the queue; the same command joins the search again",
    "finetune": "the same command resumes from the last saved checkpoint",
    "pipeline": "the same command resumes at the first unfinished stage",
}
HELP_FLAGS = ("-h", "--help")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    from tale_opt.credentials import install_log_masking

    install_log_masking()
    try:
        if command is not None:
            importlib.import_module(SUBCOMMANDS[command]).main(argv[1:])
        else:
            importlib.import_module(DEFAULT).main(argv)
    except KeyboardInterrupt:
        if is_debug(argv):
            raise
        again = RESUME.get(command)
        print(f"error: interrupted{'; ' + again if again else ''}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def commands_help() -> str:
    """The command list that `python -m tale_opt --help` prints before the search's options."""
    width = max(len(name) for name in SUMMARIES)
    lines = [
        "usage: python -m tale_opt [key=value ...]      run a search (-m: a sweep, see below)",
        "       python -m tale_opt COMMAND [--help]     another command:",
        *(f"  {name:<{width}}  {SUMMARIES[name]}" for name in SUBCOMMANDS),
        "",
    ]
    return "\n".join(lines)


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


def print_usage(doc: str | None, keys: str) -> None:
    """`--help` of a command that takes ``key=value`` overrides: its docstring (the usage
    and what it does) and where its keys are listed."""
    print(textwrap.dedent(doc or "").strip())
    print(f"\n{keys}")


def fail(err: BaseException, debug: bool) -> None:
    """Print `err` as one `error:` line and exit (2 for bad input, 1 for a failed search);
    with `debug` re-raise it, traceback and all."""
    if debug:
        raise err
    print(f"error: {err}", file=sys.stderr)
    sys.exit(EXIT_USAGE if isinstance(err, UsageError) else 1)


def is_debug(argv: Sequence[str]) -> bool:
    return any(a.lower() in ("debug=true", "debug=1", "+debug=true") for a in argv)
