"""Command line: ``aetl run --config FILE --workdir DIR [--config.KEY=VALUE ...]``.

``FILE`` is a Python config file defining ``get_config()`` (the ones in
``experiments/`` or your own, anywhere). ``--overwrite`` discards what the
workdir holds; otherwise a rerun resumes. Exit codes: 0 done, 2 bad input
(config, data, workdir), 3 a failure during training, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from aetl_jax.core.config import ConfigError

DEFAULT_CONFIG = "experiments/digits_transfer.py"
EXIT_BAD_INPUT, EXIT_TRAINING, EXIT_INTERRUPTED = 2, 3, 130


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="aetl", description="Run an aetl_jax experiment config. Overrides: --config.KEY=VALUE "
                               "(e.g. --config.pretrain.epochs=20).")
  sub = parser.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="run a config into a workdir (a rerun resumes)")
  run.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"path to a config file with get_config() (default: {DEFAULT_CONFIG})")
  run.add_argument("--workdir", help="directory for checkpoints, metrics and results")
  run.add_argument("--overwrite", action="store_true",
                   help="delete what a previous run wrote into the workdir instead of resuming")
  run.add_argument("--no-progress", action="store_true", help="hide progress bars")
  run.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
  return parser


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith("--config.")]
  args, unknown = _parser().parse_known_args([a for a in argv if not a.startswith("--config.")])
  from aetl_jax import api
  from aetl_jax.engine.checkpoint import CheckpointError
  from aetl_jax.workdir import WorkdirLock, prepare_workdir
  lock = None
  try:
    if unknown:
      raise ConfigError(f"unrecognised argument(s) {' '.join(unknown)}; overrides are written "
                        f"--config.KEY=VALUE, flags: --config FILE, --workdir, --overwrite, "
                        f"--no-progress, --print-config")
    config = api.load_config(args.config, overrides)
    if args.print_config:
      print(config)
      return 0
    if not args.workdir:
      raise ConfigError("--workdir is required (where checkpoints, metrics and results go)")
    task, data = api.prepare(config)
    lock = WorkdirLock(args.workdir).acquire()
    workdir, resuming = prepare_workdir(args.workdir, config, experiment=config.task,
                                        overwrite=args.overwrite)
    return _run(task, config, workdir, data, resuming, progress=not args.no_progress)
  except (ConfigError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  except KeyboardInterrupt:
    print("interrupted before anything ran", file=sys.stderr)
    return EXIT_INTERRUPTED
  finally:
    if lock is not None:
      lock.release()


def _run(task, config, workdir, data, resuming, *, progress: bool) -> int:
  handler = logging.StreamHandler(sys.stderr)  # this run's log lines, removed when it ends
  handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
  root = logging.getLogger()
  level = root.level
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  try:
    if resuming:
      logging.getLogger("aetl").info("resuming the run in %s", workdir)
    return _report(task.fn, config, workdir, data, progress)
  finally:
    root.removeHandler(handler)
    root.setLevel(level)


def _report(fn, config, workdir, data, progress) -> int:
  from aetl_jax.engine.checkpoint import CheckpointError, CheckpointSaveError
  from aetl_jax.engine.guard import NonFiniteError
  try:
    out = fn(config, workdir, data, progress=progress)
  except (ConfigError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  except (NonFiniteError, CheckpointSaveError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_TRAINING
  except OSError as e:
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    print(f"error: {e.strerror or e}{where}; rerun the same command to resume from {workdir}",
          file=sys.stderr)
    return EXIT_TRAINING
  except KeyboardInterrupt:
    print(f"interrupted; rerun the same command to resume from {workdir}", file=sys.stderr)
    return EXIT_INTERRUPTED
  print()
  print(out["table"])
  artifacts = out.get("artifacts", ["results/results.md", "results/results.csv",
                                    "results/results.json", "results/summary.png",
                                    "metrics/*.jsonl", "pretrain/checkpoints/"])
  print(f"\nartifacts in {workdir}: {', '.join(artifacts)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
