"""Chan et al. 2024's stylized gated model f = α·g + (1−α)·h trained by Algorithm 1 on the stylized data.

Streaming, as in the theory: one pass over fresh sequences (dataset_size = 0, step t reads sequence t, batch 1),
so the state after N steps is the model after seeing N sequences, and a run of N steps is the prefix of a longer
one. Every group has its own no-regret learner (iclscale/learners.py).

  python main.py --config=configs/chan2024_gated.py           # quick: N = 2^14 sequences, about a minute
  python main.py --config=configs/chan2024_gated.py:full      # N = 2^20
  python main.py --config=configs/chan2024_gated.py:tiny      # seconds, for tests and smoke runs
  # upstream's end-to-end variant: --config.model.mode=end_to_end --config.optim.name=adam --config.optim.lr=3e-4
  #   (with --config.model.alpha=mlp --config.model.g=mlp for upstream's exact model)
  # the N/σ/p_high study with theory side by side: python -m iclscale.studies.gated_study --workdir=runs/gated_study
"""
import ml_collections

from configs import common


ARGS = ("tiny", "quick", "full")   # the arguments get_config accepts (configs/X.py:<arg>)

def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  scale = common.pick_scale(arg, ARGS, "quick")
  c = common.base()                     # seed, data, mesh, checkpoint and report blocks

  c.task = ml_collections.ConfigDict()
  c.task.name = "stylized"              # the Chan et al. 2024 distribution (iclscale/tasks/stylized.py)
  c.task.num_high = 5                   # |C_H| common classes
  c.task.num_low = 5                    # |C_L| rare classes
  c.task.p_high = 0.9                   # probability mass of the common classes
  c.task.p_relevant = 0.9               # per-slot relevance probability: h errs on the ~10% irrelevant contexts
  c.task.num_relevant = -1              # -1: r ~ Binomial(L, p_relevant)
  c.task.input_noise = 0.2              # σ: carries queries across region boundaries, g's irreducible error
  c.task.label_noise = 0.0              # ε: a label becomes (y+1) mod K with this probability
  c.task.context_len = 1                # L context pairs (L = 1: h copies the one context label)
  c.task.dim = 64                       # input dimension d
  c.task.dataset_size = 0               # streaming: every step reads a fresh sequence (the theory's setting)

  c.model = ml_collections.ConfigDict()
  c.model.name = "gated"                # iclscale/models/gated.py
  c.model.mode = "bilevel"              # Algorithm 1: g, h on their own losses, α on m_t = α·(ℓ'_g − ℓ'_h)
  c.model.g = "table"                   # IW predictor: logits per nearest-prototype region of the query
  c.model.alpha = "table"               # gate: one α ∈ [0, 1] per query region
  c.model.hidden = (64, 64)             # widths of the mlp options (g=mlp / alpha=mlp), as upstream
  c.model.init_tau = 1.0                # h's temperature τ = exp(log_tau) at the start
  c.model.alpha_init = 0.5              # the gate starts indifferent
  # The gate compares 0-1 errors: bounded, as the regret bounds need, and what theory.py predicts. (With L = 1,
  # h is one-hot, so its log-loss when wrong is -log(prob_floor) and would swamp the comparison.)
  c.model.gate_loss = "error"
  c.model.prob_floor = 1e-7             # h and f are clipped here before a log

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "bilevel"              # one no-regret learner per parameter group (iclscale/learners.py)
  c.optim.lr = 1.0                      # unused by the learners (each has its own lr); logged as train/lr
  c.optim.schedule = "constant"         # the learners run their own lr/sqrt(t) clocks
  # One learner per parameter group. With model.g='mlp' or model.alpha='mlp' give that group OGD without a box,
  # e.g. dict(type="ogd", lr=0.1): Hedge's 'pair' experts are probabilities, not network weights.
  c.optim.learners = dict(
      # g: projected OGD on the logit table, kept in a box so the log-loss stays bounded (regret guarantee).
      g=dict(type="ogd", lr=1.0, project="box", lo=-8.0, hi=8.0),
      # h: OGD on log τ (its gradient is 0 for L = 1, where the softmax has one item).
      h=dict(type="ogd", lr=0.1),
      # α: Hedge between the two experts g and h; α crosses 1/2 when their cumulative losses cross.
      alpha=dict(type="hedge", lr=1.0, experts="pair"),
  )

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = {"tiny": 256, "quick": 2**14, "full": 2**20}[scale]   # = N sequences (one pass)
  c.train.batch_size = 1                # one example per round, as Algorithm 1
  c.train.steps_per_dispatch = 64       # K rounds per jitted scan (N = 2^6 is the smallest study size)
  c.train.log_every = {"tiny": 64, "quick": 1024, "full": 2**14}[scale]       # online loss/accuracy of f

  c.data.pipeline = "device"            # indices t on the device: streaming needs no host sampler

  c.mesh.num_devices = 1                # batch 1 cannot be split

  c.checkpoint.every = {"tiny": 128, "quick": 2**12, "full": 2**16}[scale]   # interval checkpoints
  c.checkpoint.keep = 2                 # interval checkpoints kept (milestones are always kept)

  c.eval_every = {"tiny": 128, "quick": 2**12, "full": 2**16}[scale]   # evaluator sweeps (plus every milestone)
  c.evals = ml_collections.ConfigDict()
  c.evals.grid = dict(                  # IBD/OOBD x {default, relevant, irrelevant} x {all, C_H, C_L}
      type="gated_heads", sets="grid",  # error/ce of f, g_* and h_* of the heads, and mean α per set
      num_examples={"tiny": 100, "quick": 1000, "full": 1000}[scale],
      batch_size={"tiny": 100, "quick": 1000, "full": 1000}[scale])
  return common.complete(c)
