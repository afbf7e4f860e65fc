"""The cheapest setting found that shows ICL emerging and then fading on a 2-core CPU within about an hour.

Singh et al.'s coopetition recipe (aadityasingh/icl-dynamics, coopetition_paper_sweep.py) scaled down: a 2-layer transformer, a context of 2
(one item of the query class and one distractor: bursty_shots=1, ways=2), many classes with few exemplars, fixed
random class vectors seen through a linear encoder, Adam at a constant learning rate. Few-shot evaluation uses the
same context of 2 (one shot per way), relabeled 0/1.

Deviation from upstream: 2000 classes share 128 labels (task.num_labels). What the probes showed (seed 0, 20K-60K
steps each): with one label per class (upstream) and 1000-16000 classes the model went straight to (C)IWL within
~10K steps and never showed ICL on the holdout (the copy read-out of each label is learned as slowly as memorizing
its class). Sharing 32 labels among 2000 classes with p_bursty=1 gave ICL ~1.0 by 14K steps and no IWL at all
(training loss ~0.01 left no pressure). 128 shared labels with p_bursty 0.9 (this config) shows the transient:
measured run (150K steps, 26 min wall on the shared 2-core CPU, ~105 steps/s): ICL (few-shot holdout, closed)
peaks at 0.98 at step 12.5K and decays at -0.35 accuracy/decade to ~0.56-0.6 at 150K; IWL (no support, closed)
crosses 0.5 at 20K and reaches 1.0.

  nohup python main.py --config=configs/transience_cpu.py --workdir=runs/transience_cpu > runs/transience_cpu.log 2>&1 &
  python -m iclscale.analysis.transience runs/transience_cpu --out runs/transience_cpu/transience
  python main.py --config=configs/transience_cpu.py:tiny      # seconds, for tests and smoke runs
"""
import ml_collections

from configs import common


ARGS = ("tiny", "local")   # the arguments get_config accepts (configs/X.py:<arg>)

def get_config(arg: str = "local") -> ml_collections.ConfigDict:
  scale = common.pick_scale(arg, ARGS, "local")
  tiny = scale == "tiny"
  c = common.base()                     # seed, data, mesh, checkpoint and report blocks

  c.task = ml_collections.ConfigDict()
  c.task.name = "bursty"                # iclscale/tasks/bursty.py
  c.task.dataset = "synthetic"          # random class vectors: no data files, any number of classes
  c.task.synthetic_classes = 64 if tiny else 2000     # many classes: memorizing them all (IWL) is slow
  c.task.synthetic_exemplars = 4        # few exemplars per class
  c.task.synthetic_dim = 32             # small fixed item dimension, projected by the linear encoder
  c.task.synthetic_spread = 0.3         # within-class variation: exemplars differ but the class stays recognisable
  c.task.noise = 0.0                    # no extra per-item noise
  c.task.num_holdout = 10               # ICL is measured on these 10 never-trained classes
  c.task.num_common = 0                 # no common/rare distinction: uniform class weights
  c.task.zipf_exponent = 0.0            # uniform over the training classes
  c.task.p_bursty = 0.9                 # DeepMind default: 10% non-bursty sequences reward IWL alone
  c.task.bursty_shots = 1               # one exemplar of the query class + one of a distractor class
  c.task.ways = 2                       # two classes per burst
  c.task.fewshot_shots = 1              # 2-way 1-shot ICL evaluation (fills the context of 2)
  c.task.context_len = 2                # two exemplar-label pairs before the query (5 tokens)
  c.task.num_labels = 16 if tiny else 128   # 2000 classes share 128 labels: the label read-out that ICL copies
                                        # is learned from every sequence, memorizing class -> label is not
  c.task.exemplars = "all"              # every exemplar of a class is used

  c.model = ml_collections.ConfigDict()
  c.model.name = "transformer"          # iclscale/models/transformer.py
  c.model.num_layers = 2                # the minimal induction-head depth
  c.model.num_heads = 8                 # as the coopetition run
  c.model.width = 64                    # d_model
  c.model.mlp_ratio = 4                 # the MLP stores the class -> label map (shared labels are not linear)
  c.model.pos_period = 30.0             # sinusoidal positions with period base 30
  c.model.encoder = "linear"            # a learned projection of the fixed class vectors

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"                 # Adam, no decay
  c.optim.lr = 3e-4                     # constant; 30x the coopetition 1e-5 to fit the CPU budget
  c.optim.schedule = "constant"         # no warmup
  c.optim.l2 = 0.0                      # no penalty (transience is the unregularised behaviour)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 200 if tiny else 150_000     # optimizer steps
  c.train.batch_size = 32               # sequences per step, as upstream
  c.train.steps_per_dispatch = 10 if tiny else 100  # K steps per jitted scan
  c.train.log_every = 100 if tiny else 2500        # train-metric cadence

  c.data.pipeline = "device"            # indices drawn on the device: no host round trip for a tiny model

  c.mesh.num_devices = 1                # a 2-layer model is fastest on one device

  c.checkpoint.every = 100 if tiny else 50_000     # interval checkpoints
  c.checkpoint.keep = 2                 # interval checkpoints kept
  c.checkpoint.per_decade = 0           # no milestone checkpoints: evaluation cadence below is enough

  c.eval_every = 100 if tiny else 2500  # ICL/IWL sweeps
  c.evals = ml_collections.ConfigDict()
  c.evals.icl_iwl = dict(               # few-shot holdout (ICL), no support (IWL), CIWL, flip, training-like
      type="icl_iwl", sets="icl_iwl",
      num_examples=64 if tiny else 1024,
      batch_size=64 if tiny else 1024)
  c.report_every_secs = 60.0            # steps/s and ETA (CLU ReportProgress)
  return common.complete(c)
