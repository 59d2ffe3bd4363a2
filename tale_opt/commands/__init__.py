"""Command line: `python -m tale_opt [overrides]` runs a search; `python -m tale_opt
<subcommand> ...` runs another command. One module per command, each with `main(argv)`:

    search   (the default) a Hydra app over the config groups in tale_opt/conf/
    worker   joins a running search (composes conf/worker.yaml)
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
from collections.abc import Sequence

from tale_opt.errors import UsageError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
DEFAULT = "tale_opt.commands.search"
# Subcommand name -> module with `main(argv)`; anything else is a search's Hydra overrides.
SUBCOMMANDS = {
    "worker": "tale_opt.commands.worker",
    "export": "tale_opt.commands.export",
    "bench": "tale_opt.commands.bench",
    "report": "tale_opt.commands.report",
    "evaluate": "tale_opt.commands.evaluate",
    "finetune": "tale_opt.commands.finetune",
    "pipeline": "tale_opt.commands.pipeline",
    "analyze": "tale_opt.commands.analyze",
}


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
        again = "; the same command resumes it (finished candidates are kept)"
        print(f"error: interrupted{again if command is None else ''}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def fail(err: BaseException, debug: bool) -> None:
    """Print `err` as one `error:` line and exit (2 for bad input, 1 for a failed search);
    with `debug` re-raise it, traceback and all."""
    if debug:
        raise err
    print(f"error: {err}", file=sys.stderr)
    sys.exit(EXIT_USAGE if isinstance(err, UsageError) else 1)


def is_debug(argv: Sequence[str]) -> bool:
    return any(a.lower() in ("debug=true", "debug=1", "+debug=true") for a in argv)
