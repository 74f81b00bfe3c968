"""One process of a 2-process CPU run (tests/test_multihost.py starts two).

Joins with the project's own ``initialize_distributed`` (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; gloo collectives), trains a tiny dense
autoencoder for two epochs with the shard_map launcher over the global mesh
(one CPU device per process), saves a checkpoint from every process, and prints
the final parameters' sum and the process count as JSON.
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_CPU_COLLECTIVES_IMPLEMENTATION", "gloo")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from aetl_jax.engine.driver import run_phases  # noqa: E402
from aetl_jax.engine.launchers import initialize_distributed, is_main_process  # noqa: E402
from aetl_jax.engine.phase import Optim, Phase  # noqa: E402
from aetl_jax.engine.runtime import make_runtime  # noqa: E402
from aetl_jax.engine.store import CheckpointStore  # noqa: E402
from aetl_jax.models.autoencoder import Autoencoder  # noqa: E402
from aetl_jax.models.mlp import MLPDecoder, MLPEncoder  # noqa: E402
from aetl_jax.objectives.reconstruction import make_reconstruction_loss  # noqa: E402


def main(workdir):
  if os.environ.get("JAX_NUM_PROCESSES"):
    initialize_distributed()
  model = Autoencoder(MLPEncoder((32,), 8), MLPDecoder((8, 8, 1), (32,)))
  x = jax.random.uniform(jax.random.PRNGKey(0), (128, 8, 8, 1))
  params = model.init(jax.random.PRNGKey(1), x[:1])["params"]
  phase = Phase("pretrain", make_reconstruction_loss(model, "bce"), (("images", "source", 32),), 2,
                Optim(1e-2, optimizer="sgd", schedule="constant"))
  runtime = make_runtime(launcher="shard_map", family="mlp", runner="scan")
  params, rows = run_phases([phase], params, {"source": {"image": x}}, jax.random.PRNGKey(2),
                            runtime=runtime, store=CheckpointStore(workdir, every=1))
  total = float(sum(jnp.sum(jnp.abs(v)) for v in jax.tree.leaves(params)))
  print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                    "devices": jax.device_count(), "sum": total, "loss": rows[-1]["loss"],
                    "main": is_main_process()}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
