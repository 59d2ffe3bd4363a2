"""`python -m tale_opt export`: write the pruned checkpoint of a search, ready to serve.

    python -m tale_opt export outputs/2026-11-23/10-00-00_arc_easy --pick best --out pruned/
    python -m tale_opt export --model path/or/hub-id --drop 3,7,12 --out pruned/

The checkpoint loads with plain `AutoModelForCausalLM.from_pretrained(out)`; before reporting
success we reload it that way and compare its logits with the in-memory pruned model. Its files
get the permissions of any file the user writes (0644 / 0755 under umask 022).

A pick that is the unpruned model (Best of a search whose best is the full model, as SLEB's
always is) is refused with the picks that do drop layers; `--pick baseline` writes the full
model on purpose.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tale_opt.commands.runs import PICKS, FinishedRun
from tale_opt.errors import UsageError
from tale_opt.types import DropSet


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tale_opt export",
        description="Write a pruned checkpoint (safetensors, config, tokenizer).",
    )
    p.add_argument("run_dir", nargs="?", help="a finished search's output directory")
    p.add_argument("--pick", default="best", choices=PICKS, help="which configuration (run_dir)")
    p.add_argument("--model", help="model path or hub id (instead of run_dir)")
    p.add_argument("--drop", help="0-based layers to drop, e.g. 3,7,12 (with --model)")
    p.add_argument("--dtype", default=None, help="override the dtype to load with")
    p.add_argument("--out", required=True, help="directory to write the checkpoint to")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _from_run(run_dir: Path, pick: str) -> tuple[dict[str, Any], DropSet]:
    run = FinishedRun.open(run_dir)
    return run.model_config(), run.pruned_drop(pick)


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], DropSet]:
    if args.run_dir and args.model:
        raise UsageError("give either a run directory or --model/--drop, not both")
    if args.run_dir:
        return _from_run(Path(args.run_dir), args.pick)
    if not args.model or args.drop is None:
        raise UsageError("give a finished run directory, or both --model and --drop (e.g. 3,7)")
    try:
        drop = DropSet.parse(args.drop)
    except ValueError as err:
        raise UsageError(f"--drop: {err}") from err
    return {"path": args.model}, drop


def main(argv: Sequence[str]) -> None:
    args = _parser().parse_args(list(argv))
    try:
        model_cfg, drop = resolve(args)
        if args.dtype:
            model_cfg["dtype"] = args.dtype
        from tale_opt.model.export import check_export_target, export_pruned, verify_export
        from tale_opt.model.loading import ModelSpec, load_model

        target = Path(args.out).expanduser().resolve()
        check_export_target(target, args.overwrite, "--overwrite")  # before a long load
        model, tokenizer = load_model(ModelSpec(**model_cfg))
        out = export_pruned(
            model, tokenizer, drop, Path(args.out), overwrite=args.overwrite,
            overwrite_hint="--overwrite",
        )  # fmt: skip
        max_diff = verify_export(model, tokenizer, drop, out)
    except (UsageError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(
        f"wrote {out} (dropped layers {drop.key or 'none'}); reloaded with "
        f"AutoModelForCausalLM.from_pretrained: max |logit difference| = {max_diff:.2e}"
    )
