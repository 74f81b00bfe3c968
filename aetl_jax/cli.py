"""Command line: ``aetl run --config FILE --workdir DIR [--config.KEY=VALUE ...]``.

``FILE`` is a Python config file defining ``get_config()`` (the ones in
``experiments/`` or your own, anywhere). ``--overwrite`` discards what the
workdir holds; otherwise a rerun resumes. Exit codes: 0 done, 2 bad input
(config, data, workdir), 3 a failure during training, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from aetl_jax.core.config import ConfigError
from aetl_jax.core.heap import start as prepare_host

DEFAULT_CONFIG = "experiments/digits_transfer.py"
# aetl list WHAT: the registry of each (module path, attribute) and the config key naming it.
LISTS = {
    "strategies": ("aetl_jax.strategies.registry", "STRATEGIES", "transfer.strategies"),
    "objectives": ("aetl_jax.objectives.registry", "OBJECTIVES", "objective.name"),
    "families": ("aetl_jax.models.family", "FAMILIES", "model.family"),
    "datasets": ("aetl_jax.data.sources", "DATASET_KINDS", "data.source / data.target (KIND:PATH)"),
    "tasks": ("aetl_jax.tasks.registry", "TASKS", "task"),
    "augmentations": ("aetl_jax.objectives.augmentation", "AUGMENTATIONS", "transfer.augment"),
    "probes": ("aetl_jax.strategies.probes", "PROBES", "(used by the probe strategies)"),
}
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
  run.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="run every value (several --sweep: their product), each point in "
                        "WORKDIR/<key=value>; a config file's get_sweep() does the same")
  compare = sub.add_parser("compare", help="one table and figure over finished workdirs")
  compare.add_argument("workdirs", nargs="+", help="finished runs (or a sweep's folder)")
  compare.add_argument("--out", help="folder for compare.md and compare.png (default: print only)")
  export = sub.add_parser("export", help="a saved classifier as Flax msgpack + JSON, for use "
                                          "without aetl_jax")
  export.add_argument("--workdir", required=True, help="a finished run's workdir")
  export.add_argument("--cell", help="budget<k>_<strategy>_seed<s> (default: the best validated)")
  export.add_argument("--out", required=True, help="folder for params.msgpack and model.json")
  export.add_argument("--overwrite", action="store_true", help="replace an earlier export there")
  listing = sub.add_parser("list", help="what is registered: names, what each does, its keys")
  listing.add_argument("what", nargs="?", default="all", choices=("all", *LISTS),
                       help="which registry (default: all)")
  predict = sub.add_parser("predict", help="class probabilities from a saved classifier")
  predict.add_argument("--workdir", required=True, help="a finished run's workdir")
  predict.add_argument("--cell", help="budget<k>_<strategy>_seed<s> (default: the saved cell with "
                                      "the best validation accuracy)")
  predict.add_argument("--images", required=True,
                       help="a folder of image files, an .npz with 'images', or an IDX file/folder")
  predict.add_argument("--out", help="CSV file to write (default: standard output); an existing "
                                     "file is replaced only with --overwrite")
  predict.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  predict.add_argument("--max-value", type=float, default=None,
                       help="the pixel value that means white in --images (default: 255 for "
                            "image files and IDX; for an .npz, 1 for floats in [0, 1], else "
                            "the training data's own scale)")
  return parser


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["list"]:
    return _list(_parser().parse_args(argv))
  if argv[:1] == ["export"]:
    return _export(_parser().parse_args(argv))
  if argv[:1] == ["predict"]:
    return _predict(_parser().parse_args(argv))
  if argv[:1] == ["compare"]:
    return _compare(_parser().parse_args(argv))
  overrides = [a for a in argv if a.startswith("--config.")]
  args, unknown = _parser().parse_known_args([a for a in argv if not a.startswith("--config.")])
  from aetl_jax import api
  from aetl_jax.engine.checkpoint import CheckpointError
  from aetl_jax.engine.launchers import DistributedError, is_main_process
  try:
    if unknown:
      raise ConfigError(f"unrecognised argument(s) {' '.join(unknown)}; overrides are written "
                        f"--config.KEY=VALUE, flags: --config FILE, --workdir, --overwrite, "
                        f"--no-progress, --print-config")
    config = api.load_config(args.config, overrides)
    if args.print_config:
      print(api.describe_config(config))
      return 0
    if not args.workdir:
      raise ConfigError("--workdir is required (where checkpoints, metrics and results go)")
    from aetl_jax import hyper
    points = hyper.parse_sweep_flags(args.sweep) or hyper.sweep_from_file(args.config)
    api.join_processes(config)  # multi-host: before anything touches a JAX backend
    if points:
      return _sweep(hyper, config, args, points)
    with api.prepared_run(config, args.workdir, overwrite=args.overwrite,
                          progress=not args.no_progress) as (task, workdir, data, resuming):
      with _project_log_lines():
        if resuming:
          logging.getLogger("aetl_jax.cli").info("resuming the run in %s", workdir)
        return _report(task.fn, config, workdir, data,
                       not args.no_progress and is_main_process())
  except (ConfigError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  except DistributedError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_TRAINING
  except KeyboardInterrupt:
    print("interrupted before anything ran", file=sys.stderr)
    return EXIT_INTERRUPTED


def _export(args) -> int:
  """``aetl export``: params.msgpack + model.json of a saved classifier."""
  from aetl_jax.transfer.classifiers import best_cell, export_classifier
  try:
    cell = args.cell or best_cell(args.workdir)
    out = export_classifier(args.workdir, cell, args.out, overwrite=args.overwrite)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  print(f"{cell} exported to {out / 'params.msgpack'} and {out / 'model.json'}", file=sys.stderr)
  return 0


def _list(args) -> int:
  """``aetl list [WHAT]``: every registered name, its one-line docstring and its keys (with
  type, default and description)."""
  import importlib
  from aetl_jax import api  # noqa: F401 - the built-ins register
  for what in LISTS if args.what == "all" else (args.what,):
    module, attr, key = LISTS[what]
    registry = getattr(importlib.import_module(module), attr)
    print(f"{what} ({key}):")
    for name in registry.names():
      entry = registry.get(name)
      print(f"  {name}: {entry.doc or '(no description)'}")
      for k, v in entry.defaults.items():
        doc = entry.key_docs.get(k, "")
        print(f"      {k} ({type(v).__name__}, default {v!r})" + (f": {doc}" if doc else ""))
    print()
  return 0


@contextlib.contextmanager
def _project_log_lines():
  """This run's log lines on stderr (the project's loggers only, once each, even when a
  library has configured the root logger), removed when it ends."""
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
  logger = logging.getLogger("aetl_jax")
  level, propagate = logger.level, logger.propagate
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def _failed(error: Exception, workdir) -> int:
  """Prints one line for an error the run can name and returns its exit code; re-raises any
  other (a bug: its traceback is wanted)."""
  from aetl_jax.engine.checkpoint import CheckpointError, CheckpointSaveError
  from aetl_jax.engine.guard import NonFiniteError
  from aetl_jax.engine.launchers import DistributedError, peer_lost
  lost = peer_lost(error)  # first: a collective inside a checkpoint read fails this way too
  if lost is not None:
    return _peer_lost(lost, workdir)
  if isinstance(error, (ConfigError, CheckpointError)):
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT
  if isinstance(error, (NonFiniteError, CheckpointSaveError, DistributedError)):
    print(f"error: {error}", file=sys.stderr)
    return EXIT_TRAINING
  if isinstance(error, OSError):
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    print(f"error: {error.strerror or error}{where}; rerun the same command to resume from "
          f"{workdir}", file=sys.stderr)
    return EXIT_TRAINING
  raise error


def _peer_lost(lost, workdir) -> int:
  print(f"error: {lost}; rerun the same command on every process to resume from {workdir}",
        file=sys.stderr, flush=True)
  sys.stdout.flush()
  # Skip the distributed runtime's shutdown: its barrier would wait for the dead process and
  # then abort this one.
  os._exit(EXIT_TRAINING)


def _report(fn, config, workdir, data, progress) -> int:
  from aetl_jax.engine.launchers import is_main_process
  try:
    out = fn(config, workdir, data, progress=progress)
  except Exception as e:  # noqa: BLE001 - _failed names the known ones and re-raises the rest
    return _failed(e, workdir)
  except KeyboardInterrupt:
    print(f"interrupted; rerun the same command to resume from {workdir}", file=sys.stderr)
    return EXIT_INTERRUPTED
  if not is_main_process():  # process 0 reports a multi-process run
    return 0
  print()
  print(out["table"])
  artifacts = out.get("artifacts", ["results/results.md", "results/results.csv",
                                    "results/results.json", "results/summary.png",
                                    "metrics/*.jsonl", "pretrain/checkpoints/"])
  print(f"\nartifacts in {workdir}: {', '.join(artifacts)}")
  return 0


def _sweep(hyper, config, args, points) -> int:
  """``aetl run --sweep ...``: every point into its own sub-workdir, then one comparison."""
  from aetl_jax.engine.launchers import is_main_process
  from aetl_jax.reporting.compare import compare
  hyper.point_configs(config, points)  # every point checked before any runs
  try:
    results = hyper.run_sweep(config, args.workdir, points, overwrite=args.overwrite,
                              progress=not args.no_progress)
  except Exception as e:  # noqa: BLE001 - as a single run's
    return _failed(e, args.workdir)
  except KeyboardInterrupt:
    print(f"interrupted; rerun the same command to resume the sweep in {args.workdir}",
          file=sys.stderr)
    return EXIT_INTERRUPTED
  if not is_main_process():  # process 0 reports a multi-process sweep
    return 0
  for r in results:
    print(f"\n## {r['name']}\n\n{r['table']}")
  table = None
  if len(results) > 1:
    try:
      table, _ = compare([r["workdir"] for r in results])
    except ValueError as e:  # the points ran; only their joint table is refused
      print(f"\nno comparison table: {e}", file=sys.stderr)
  if table:
    (Path(args.workdir) / "compare.md").write_text(table + "\n")
    print(f"\n## comparison ({len(results)} points)\n\n{table}")
  return 0


def _compare(args) -> int:
  """``aetl compare DIR...``: a sweep folder expands to its points."""
  from aetl_jax.reporting.compare import compare, compare_figure
  dirs = []
  for d in args.workdirs:
    sweep = Path(d) / "sweep.json"
    if sweep.exists():
      import json
      dirs += [str(Path(d) / p["name"]) for p in json.loads(sweep.read_text())]
    else:
      dirs.append(d)
  try:
    table, rows = compare(dirs)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  print(table)
  if args.out:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(table + "\n")
    compare_figure(out / "compare.png", rows)
    print(f"\nwritten: {out / 'compare.md'}, {out / 'compare.png'}", file=sys.stderr)
  return 0


def _out_file(out, overwrite: bool) -> Path | None:
  """``--out`` checked before anything runs: a file in an existing folder, not replaced
  unless ``--overwrite``."""
  if out is None:
    return None
  out = Path(out)
  if out.is_dir():
    raise ValueError(f"--out {out} is a folder; name a CSV file, e.g. {out / 'predictions.csv'}")
  if not out.parent.is_dir():
    raise ValueError(f"--out {out}: folder {out.parent} does not exist; create it first")
  if out.exists() and not overwrite:
    raise ValueError(f"--out {out} exists; pass --overwrite to replace it, or name a new file")
  return out


def _predict(args) -> int:
  """``aetl predict``: one CSV row per image: index, file, predicted class, its name (the class
  folder it came from, when read from class sub-folders), then every probability."""
  import csv
  import io
  from aetl_jax.transfer.classifiers import best_cell, load_classifier, read_images
  try:
    out = _out_file(args.out, args.overwrite)
    if args.max_value is not None and not args.max_value > 0:
      raise ValueError(f"--max-value must be a positive number, got {args.max_value}")
    cell = args.cell or best_cell(args.workdir)
    clf = load_classifier(args.workdir, cell)
    images = read_images(args.images)
    probs = clf.predict(images.pixels, args.max_value or images.max_value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  names = clf.description["label_names"]
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  folder = [] if images.folders is None else ["folder"]
  writer.writerow(["index", "file", *folder, "predicted", "label_name",
                   *[f"p_{n}" for n in names]])
  for i, p in enumerate(probs):
    k = int(p.argmax())
    where = [] if images.folders is None else [images.folders[i]]
    writer.writerow([i, images.names[i], *where, k, names[k], *[f"{v:.6f}" for v in p]])
  if out is not None:
    from aetl_jax.core.files import atomic_write_text
    atomic_write_text(out, buffer.getvalue())
    print(f"{len(probs)} predictions of {cell} written to {out}", file=sys.stderr)
  else:
    sys.stdout.write(buffer.getvalue())
  return 0


def _in_multi_process_run() -> bool:
  jax = sys.modules.get("jax")
  return jax is not None and jax.distributed.is_initialized()


def entry() -> None:
  """The ``aetl`` command (and ``python -m aetl_jax``): :func:`main`, then the process ends.
  After Ctrl-C it ends without the interpreter's shutdown, in which Orbax's background
  checkpoint threads would print tracebacks under the one line already said (the lock is
  the kernel's; an unfinished checkpoint step is never taken for a finished one). First it
  sets the host's memory up (:func:`aetl_jax.core.heap.start`: freed memory reused unless
  ``AETL_REUSE_HEAP=0``; with ``AETL_HUGEPAGES=1`` it runs itself again with huge pages)."""
  prepare_host()
  code = main()
  if code == EXIT_INTERRUPTED or (code != 0 and _in_multi_process_run()):
    # (a failed multi-process run also skips the distributed runtime's shutdown barrier,
    # which would wait for a dead peer and then abort this process)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == "__main__":
  entry()
