"""Command line: ``python -m experiments [NAME] --workdir DIR [--config.KEY=VALUE ...]``.

NAME defaults to the embedded offline experiment (digits_transfer).
``--overwrite`` discards what the workdir holds; otherwise a rerun resumes.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys

from aetl_jax.config import ConfigError, apply_overrides
from aetl_jax.workdir import prepare_workdir
from experiments import DEFAULT_EXPERIMENT, EXPERIMENTS


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m experiments",
      description="Run an aetl_jax experiment. Config overrides: --config.KEY=VALUE "
                  "(e.g. --config.pretrain.epochs=20).")
  parser.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT,
                      help=f"one of: {', '.join(EXPERIMENTS)} (default: {DEFAULT_EXPERIMENT})")
  parser.add_argument("--workdir", help="directory for checkpoints, metrics and results")
  parser.add_argument("--overwrite", action="store_true",
                      help="delete what the workdir holds instead of resuming")
  parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
  parser.add_argument("--print-config", action="store_true",
                      help="print the resolved config and exit")
  return parser


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith("--config.")]
  args, unknown = _parser().parse_known_args([a for a in argv if not a.startswith("--config.")])
  try:
    if unknown:
      raise ConfigError(f"unrecognised argument(s) {' '.join(unknown)}; overrides are written "
                        f"--config.KEY=VALUE, flags: --workdir, --overwrite, --no-progress, --print-config")
    if args.experiment not in EXPERIMENTS:
      close = difflib.get_close_matches(args.experiment, EXPERIMENTS, n=3)
      raise ConfigError(f"unknown experiment {args.experiment!r}; valid: {', '.join(EXPERIMENTS)}"
                        + (f" (did you mean {', '.join(close)}?)" if close else ""))
    module = importlib.import_module(EXPERIMENTS[args.experiment])
    config = apply_overrides(module.get_config(), overrides)
    if args.print_config:
      print(config)
      return 0
    if not args.workdir:
      raise ConfigError("--workdir is required (where checkpoints, metrics and results go)")
    module.validate(config)
    workdir, resuming = prepare_workdir(args.workdir, config, experiment=args.experiment,
                                        overwrite=args.overwrite)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
  if resuming:
    logging.getLogger("experiments").info("resuming the run in %s", workdir)
  try:
    out = module.run(config, workdir, progress=not args.no_progress)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print()
  print(out["table"])
  artifacts = out.get("artifacts", ["results/results.md", "results/results.csv",
                                    "results/results.json", "results/summary.png",
                                    "metrics/*.jsonl", "pretrain/checkpoints/"])
  print(f"\nartifacts in {workdir}: {', '.join(artifacts)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
