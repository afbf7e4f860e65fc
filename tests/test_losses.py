"""Losses and answer scoring against hand-computed values."""
import jax.numpy as jnp
import numpy as np
import pytest

from iclscale import losses


def test_query_ce_by_hand():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]]))
  loss, metrics = losses.query_ce(logits, dict(target=jnp.array([0, 2, 1])))
  np.testing.assert_allclose(loss, -np.mean(np.log([0.7, 0.8, 0.4])), rtol=1e-6)
  assert metrics["loss"] == loss and float(metrics["accuracy"]) == pytest.approx(2 / 3)


def test_answer_ce_and_exact_match_by_hand():
  logits = jnp.zeros((2, 2, 4)).at[0, 0, 1].set(10.0).at[0, 1, 2].set(10.0).at[1, 0, 1].set(10.0)
  batch = dict(answer_tok=jnp.array([[1, 2], [1, 3]]), answer_mask=jnp.array([[True, True], [True, False]]))
  loss, metrics = losses.answer_ce(logits, batch)
  confident = np.log1p(3 * np.exp(-10.0))                      # CE of a 10-logit margin over 3 others
  assert float(loss) == pytest.approx(confident, rel=1e-2)     # float32; 3 real answer tokens, all right; slot (1,1) masked
  assert float(metrics["accuracy"]) == 1.0
  _, metrics = losses.answer_ce(logits, dict(batch, answer_mask=jnp.ones((2, 2), bool)))
  assert float(metrics["accuracy"]) == 0.5                     # row 1's second token (uniform -> argmax 0) is wrong


def test_answer_scores_by_hand():
  """logp sums the real answer tokens' log-probabilities; rank counts tokens more likely than the slot's answer."""
  probs = np.array([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]],      # row 0: answers 1 then 2 (both real)
                    [[0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]])     # row 1: answer 2, second slot padding
  batch = dict(answer_tok=jnp.array([[1, 2], [2, 0]]), answer_mask=jnp.array([[True, True], [True, False]]))
  out = losses.answer_scores(jnp.log(jnp.asarray(probs)), batch)
  np.testing.assert_allclose(out["logp"], [np.log(0.3) + np.log(0.3), np.log(0.6)], rtol=1e-5)
  np.testing.assert_array_equal(out["exact"], [0.0, 1.0])   # row 0's first token: argmax 0, not 1
  np.testing.assert_array_equal(out["rank"], [1.0, 0.0])    # slot 0: one token beats row 0's answer
  np.testing.assert_array_equal(losses.answer_scores(jnp.log(jnp.asarray(probs)), batch, slot=1)["rank"],
                                [1.0, 1.0])                 # slot 1: 0.6 > 0.3; row 1 token 0 (0.3) < 0.4
