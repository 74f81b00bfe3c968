"""The registry of tasks (``config.task``): what a run does with its config.

A task registers ``run(config, workdir, data, *, progress) -> dict`` with, in
``info``: ``load(config, *, progress) -> data`` (everything read before the workdir is
touched) and ``check(config, data)`` (config checks that need the data). The
returned dict holds at least ``table`` (printed at the end).
"""

from aetl_jax.core.registry import Registry

TASKS = Registry("task", "task")
