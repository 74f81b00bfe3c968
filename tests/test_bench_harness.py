"""The benchmark harness runs end to end with tiny sizes (it never asserts a time)."""

import pytest


@pytest.mark.slow
def test_bench_harness_runs_and_counts_no_recompiles(tmp_path, monkeypatch):
  from aetl_jax.bench.__main__ import main
  from aetl_jax.models import onednn
  monkeypatch.setenv("AETL_CACHE", str(tmp_path))  # any oneDNN build goes here
  rows = main(["--quick", "--no-torch", "--json", str(tmp_path / "b.json")])
  assert rows["matmul_peak_gflops"] > 0
  usable = onednn.problem() is None  # 'auto' runs oneDNN's convolutions; then XLA's beside
  assert [(r["family"], r["runner"], r["conv_impl"]) for r in rows["pretrain"]] == [
      ("mlp", "scan", None), ("mlp", "per_batch", None), ("conv_transpose", "scan", "matmul"),
      ("conv_transpose", "per_batch", "onednn" if usable else "hybrid")] + (
          [("conv_transpose", "per_batch", "hybrid")] if usable else [])
  assert all(r["examples_per_s"] > 0 and r["gflop_per_example"] > 0 for r in rows["pretrain"])
  assert all(r["kernels_alone_gflops"] > 0 and r["kernel_time_share"] > 0
             for r in rows["pretrain"] if r["conv_impl"] != "onednn")
  hybrid = {(r["family"], r["batch"]): r for r in rows["pretrain"] if r["conv_impl"] == "hybrid"}
  for r in (r for r in rows["pretrain"] if r["conv_impl"] == "onednn"):  # hybrid's model
    assert r["kernels_alone_gflops"] is None
    assert r["gflop_per_example"] == hybrid[r["family"], r["batch"]]["gflop_per_example"]
  assert [r["mode"] for r in rows["finetune"]] == ["finetune", "partial", "linear_probe (cached)"]
  assert [r["model"] for r in rows["sequence"]] == ["aetl_jax (bucketed)"]
  assert all(r["sentences_per_s"] > 0 and r["tokens_per_s"] > r["sentences_per_s"]
             for r in rows["sequence"])
  assert [(r["model"], r["size"]) for r in rows["backbone"]] == [("aetl_jax (auto)", 32)]
  assert all(r["examples_per_s"] > 0 for r in rows["backbone"])
  assert [(r["row"], r["step"]) for r in rows["steps"]] == [
      ("ladder", "ladder"), ("ladder", "classifier"), ("two_player", "two_player"),
      ("two_player", "one_player")]
  assert all(r["examples_per_s"] > 0 for r in rows["steps"])
  assert rows["compiles_during_timed_parts"] == 0
  assert (tmp_path / "b.json").stat().st_size > 0


@pytest.mark.slow
def test_conv_bench_runs_its_grid():
  from aetl_jax.bench.conv import main
  rows = main(["--batch", "8", "--examples", "16", "--epochs", "1", "--impls", "xla,matmul",
               "--upsampling", "transpose", "--runners", "per_batch", "--xla-defaults"])
  variants = {"library", "xla default"} if rows[0]["compiler_options"] == "library" else set()
  assert {(r["conv_impl"], r["compiler_options"]) for r in rows} >= {
      (i, v) for i in ("xla", "matmul") for v in variants}
  assert all(r["examples_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_conv_layer_bench_times_every_layer_and_formulation():
  from aetl_jax.bench.conv_layers import LAYERS, main
  rows = main(["--batch", "2", "--repeats", "1", "--no-torch"])
  assert [r["layer"] for r in rows if r["impl"] == "jax xla"] == [layer[0] for layer in LAYERS]
  assert {r["layer"] for r in rows if r["impl"] == "jax narrow"} == {"decoder/block_3"}
  for formulation in ("subpixel", "hybrid"):
    assert {r["layer"] for r in rows if r["impl"] == f"jax {formulation}"} == {
        layer[0] for layer in LAYERS if layer[-1] == "transpose"}
  assert all(r[k][0] > 0 and r[k][1] > 0 for r in rows
             for k in ("forward", "input grad", "kernel grad", "input+kernel grad") if k in r)


_TINY = [dict(family="resnet18", batch=2, size=6, cin=4, cout=8, kernel=3, stride=1, count=2,
              candidates=("xla", "patches")),
         dict(family="conv", batch=2, size=6, cin=4, cout=1, kernel=3, stride=1, count=1,
              candidates=("xla", "narrow"))]


def test_conv_table_measures_every_candidate_and_writes_what_auto_reads(tmp_path):
  import json

  from aetl_jax.bench.conv_layers import main, table, table_layers
  from aetl_jax.models.conv_table import load, measured_choice
  measured = table(1, _TINY)
  assert [set(e["ms"]) for e in measured["layers"]] == [{"xla", "patches"}, {"xla", "narrow"}]
  for e in measured["layers"]:
    assert e["best"] == min(e["ms"], key=e["ms"].get) and (e["out"], e["batch"]) == (6, 2)
  path = tmp_path / "t.json"
  path.write_text(json.dumps(measured))
  e = measured["layers"][0]
  assert measured_choice(("xla", "patches"), backend=e["backend"], batch=2, out=6, cin=4, cout=8,
                         kernel=3, stride=1, entries=load(str(path))) == e["best"]
  assert {l["family"] for l in table_layers()} == {"resnet18"}
  assert {l["batch"] for l in table_layers(((96, 8),)) if l["family"] == "resnet18"} == {8}
  for bad in ("96", "16:8", "a:b"):
    with pytest.raises(SystemExit, match="SIZE:BATCH"):
      main(["--table", "--resnet", bad])


def test_onednn_bench_reports_an_effect_or_none_for_every_option_set():
  from aetl_jax.bench.onednn import ONEDNN_OPTION_SETS, rows
  out = rows(1, 1, _TINY[:1])
  assert [r["options"] for r in out] == list(ONEDNN_OPTION_SETS)
  assert all(r["effect"] for r in out)
  # the comparison ignores source locations (two traces) but sees another program
  from aetl_jax.bench.conv_layers import table_program
  from aetl_jax.bench.onednn import _instructions, _program
  assert _instructions(_program(_TINY[0], {})[0]) == _instructions(_program(_TINY[0], {})[0])
  patches, args = table_program(_TINY[0], "patches")
  assert _instructions(patches.lower(*args).compile()) != \
      _instructions(_program(_TINY[0], {})[0])


@pytest.mark.slow
def test_onednn_library_bench_times_both_or_names_what_is_missing(tmp_path, monkeypatch):
  """Per layer (every wide layer, transposed ones too) and per step, hybrid's (XLA's)
  formulations against the oneDNN custom calls; without oneDNN here, one line naming the
  install command."""
  from aetl_jax.bench import onednn_library as bench
  from aetl_jax.models import onednn
  monkeypatch.setenv("AETL_CACHE", str(tmp_path))  # any build goes here, not to ~/.cache
  for bad in (["--batches", "0"], ["--batches", "a"], ["--rounds", "0"]):
    with pytest.raises(SystemExit, match="--batches takes positive integers"):
      bench.main(bad)
  if (why := onednn.problem()) is not None:
    with pytest.raises(SystemExit, match="pip install onednn-devel-cpu-gomp"):
      bench.main(["--batches", "2"])
    return
  out = bench.layer_rows((2,), 1, 1)
  assert [r["layer"] for r in out] == [layer[0] for layer in bench.layers()]
  assert {"decoder/block_1", "decoder/block_2", "transposed/block_2"} <= {r["layer"] for r in out}
  assert all(r[who, p] > 0 for r in out for who in ("hybrid", "onednn") for p in bench.PASSES)
  steps = bench.step_rows((8,), 1, 1, use_torch=False, n=16)
  assert [(r["family"], r["batch"]) for r in steps] == [("conv", 8), ("conv_transpose", 8)]
  assert all(r["hybrid"] > 0 and r["onednn"] > 0 and "torch" not in r for r in steps)


@pytest.mark.parametrize("batches", ["a,2", "0", ""])
def test_bad_batches_flag_is_named(batches):
  from aetl_jax.bench.__main__ import main
  with pytest.raises(SystemExit, match="positive integers"):
    main(["--batches", batches, "--no-torch"])


def test_kernel_ceiling_replays_exactly_the_steps_matmuls_and_convolutions():
  import jax
  import jax.numpy as jnp

  from aetl_jax.bench.ceiling import heavy_equations, kernel_ceiling
  from aetl_jax.models.conv_ops import narrow_conv

  def loss(params, x):  # two dense layers, then a narrow conv with a hand-written backward
    h = jnp.tanh(x @ params["w1"]) @ params["w2"]
    return jnp.sum(narrow_conv(h.reshape(2, 4, 4, 2), params["k"]) ** 2)

  params = {"w1": jnp.ones((8, 16)), "w2": jnp.ones((16, 32)), "k": jnp.ones((3, 3, 2, 1))}
  x = jnp.ones((2, 8))
  eqns = heavy_equations(jax.make_jaxpr(jax.grad(loss))(params, x))
  # forward: 2 dense + the narrow conv's one matmul; backward: dw2, dh, dw1 (x needs no
  # gradient) + the narrow conv's two matmuls (dx, dk)
  assert [e.primitive.name for e in eqns].count("dot_general") == 3 + 3 + 2
  ceiling = kernel_ceiling(jax.grad(loss), (params, x), repeats=1)
  assert ceiling["count"] == len(eqns) and ceiling["flops"] > 0 and ceiling["gflops"] > 0
  conv = jax.grad(lambda k, x: jnp.sum(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")))
  assert [e.primitive.name for e in heavy_equations(jax.make_jaxpr(conv)(
      jnp.ones((2, 3, 3, 3)), jnp.ones((1, 3, 5, 5))))] == ["conv_general_dilated"] * 2


@pytest.mark.slow
def test_one_class_bench_times_vmapped_against_sequential_without_recompiling():
  from aetl_jax.bench.one_class import main
  rows = main(["--models", "3", "--examples", "64", "--batch", "32", "--epochs", "1",
               "--repeats", "1", "--no-torch"])
  assert [r["contender"] for r in rows] == ["vmapped", "sequential"]
  assert all(r["examples_per_s"] > 0 and r["compiles"] == 0 for r in rows)
  assert rows[1]["speedup_vs_sequential"] == 1.0


@pytest.mark.slow
def test_host_devices_bench_times_one_device_against_data_parallel_in_own_processes():
  from aetl_jax.bench.host_devices import main
  # 3 devices: the default batch sizes (64, 256) do not divide, the contenders' own one does
  rows = main(["--devices", "3", "--batches", "6", "--examples", "24", "--rounds", "1",
               "--repeats", "1", "--kinds", "transpose", "--no-torch"])
  assert [(r["mode"], r["devices"]) for r in rows] == [("jit", 1), ("shard_map", 3)]
  assert all(r["examples_per_s"] > 0 and len(r["rounds"]) == 1 for r in rows)
  assert all(r["ratio_vs_torch"] is None for r in rows)


@pytest.mark.slow
def test_host_devices_bench_names_the_failing_contender():
  from aetl_jax.bench.host_devices import _arguments, _spawn
  args = _arguments(["--examples", "8", "--repeats", "1"])
  with pytest.raises(RuntimeError, match="contender nope/jit/b8 failed: .*nope"):
    _spawn("nope", "jit", 8, args)


@pytest.mark.parametrize("argv, what", [
    (["--kinds", "transposed"], "--kinds 'transposed': valid kinds are transpose, subpixel"),
    (["--devices", "2", "--batches", "64,255"], "divisible by --devices 2"),
    (["--devices", "0"], "--devices must be at least 1"),
    (["--rounds", "0"], "--rounds must be at least 1")])
def test_host_devices_bench_refuses_bad_arguments_in_one_line(argv, what, capsys):
  from aetl_jax.bench.host_devices import _arguments
  with pytest.raises(SystemExit):
    _arguments(argv)
  assert what in capsys.readouterr().err
