"""Every bad input to main.py ends in one `error:` line and a non-zero exit, with no traceback, before anything
compiles, and writes no workdir (or changes nothing in an existing one).

Most cases run main.py's own parsing and main() in this process (the flags are re-parsed for each case, so they
take the path a user's command takes); a set of them also runs as `python main.py` subprocesses, side by side.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "configs")
TINY = os.path.join(CFG, "chan2024_synthetic.py") + ":tiny"

import main  # noqa: E402  # pylint: disable=wrong-import-position  # defines the flags (no --config.* in argv)


def write(path, text):
  with open(path, "w") as f:
    f.write(text)
  return str(path)


# (id, argv given the tmp dir, what the error line must contain). The workdir is <tmp>/run unless argv sets it.
CASES = [
    ("unknown_top_key", lambda t: [f"--config={TINY}", "--config.no_such_key=1"], "no field 'no_such_key'"),
    ("unknown_nested_key", lambda t: [f"--config={TINY}", "--config.train.num_stepz=1"],
     "--config.train.num_stepz: the config has no field 'num_stepz' (did you mean 'num_steps'?)"),
    ("unknown_evaluator_key", lambda t: [f"--config={TINY}", "--config.evals.grid.nope=1"], "no field 'nope'"),
    ("unknown_deep_key", lambda t: [f"--config={TINY}", "--config.task.deep.er=1"], "no field"),
    ("missing_config_file", lambda t: [f"--config={CFG}/nope.py"], "cannot load the config file"),
    ("config_syntax_error", lambda t: [f"--config={write(t / 'bad.py', 'def get_config(:')}"], "syntax error in"),
    ("config_raises", lambda t: [f"--config={write(t / 'div.py', 'def get_config():  return 1 / 0')}"],
     "ZeroDivisionError while building the config"),
    ("config_is_a_directory", lambda t: [f"--config={t}"], "cannot load the config file"),
    ("unknown_scale", lambda t: [f"--config={CFG}/chan2024_synthetic.py:huge"], "unknown scale 'huge'"),
    ("unknown_russin_word", lambda t: [f"--config={CFG}/russin2024.py:grid,huge"], "unknown words ['huge']"),
    ("unknown_russin_task", lambda t: [f"--config={CFG}/russin2024.py:maze"], "must be grid or category"),
    ("override_not_an_int", lambda t: [f"--config={TINY}", "--config.train.num_steps=abc"], "invalid literal"),
    ("override_not_a_bool", lambda t: [f"--config={TINY}", "--config.train.eval_at_start=maybe"],
     "--config.train.eval_at_start"),
    ("override_block_with_scalar", lambda t: [f"--config={TINY}", "--config.task=3"], "as a ConfigDict"),
    ("unknown_flag", lambda t: [f"--config={TINY}", "--nosuchflag"], "Unknown command line flag 'nosuchflag'"),
    ("probability_out_of_range", lambda t: [f"--config={TINY}", "--config.task.p_relevant=1.5"],
     "config.task.p_relevant: must be a probability in [0, 1], got 1.5"),
    ("negative_per_decade", lambda t: [f"--config={TINY}", "--config.checkpoint.per_decade=-1"],
     "config.checkpoint.per_decade: must be an int >= 0, got -1"),
    ("negative_checkpoint_every", lambda t: [f"--config={TINY}", "--config.checkpoint.every=-10"],
     "config.checkpoint.every"),
    ("zero_checkpoints_kept", lambda t: [f"--config={TINY}", "--config.checkpoint.keep=0"], "config.checkpoint.keep"),
    ("steps_not_multiple_of_dispatch", lambda t: [f"--config={TINY}", "--config.train.num_steps=105"],
     "multiple of train.steps_per_dispatch=10"),
    ("negative_lr", lambda t: [f"--config={TINY}", "--config.optim.lr=-1"], "config.optim.lr: must be > 0"),
    ("negative_grad_clip", lambda t: [f"--config={TINY}", "--config.optim.grad_clip=-1"], "config.optim.grad_clip"),
    ("unknown_optimizer", lambda t: [f"--config={TINY}", "--config.optim.name=sgd"], "config.optim.name: must be one of"),
    ("warmup_without_steps", lambda t: [f"--config={TINY}", "--config.optim.schedule=warmup_rsqrt"],
     "config.optim.warmup_steps"),
    ("decay_with_adam", lambda t: [f"--config={TINY}", "--config.optim.weight_decay=0.1"], "config.optim.weight_decay"),
    ("unknown_task", lambda t: [f"--config={TINY}", "--config.task.name=nope"], "config.task.name: unknown task 'nope'"),
    ("unknown_model", lambda t: [f"--config={TINY}", "--config.model.name=nope"], "config.model.name: unknown model"),
    ("unknown_evaluator", lambda t: [f"--config={TINY}", "--config.evals.grid.type=nope"],
     "config.evals.grid.type: unknown evaluator type"),
    ("heads_do_not_divide_width", lambda t: [f"--config={TINY}", "--config.model.num_heads=3"], "config.model.num_heads"),
    ("too_many_devices", lambda t: [f"--config={TINY}", "--config.mesh.num_devices=99"], "config.mesh.num_devices"),
    ("negative_fsdp_min_size", lambda t: [f"--config={TINY}", "--config.mesh.fsdp_min_size=-1"],
     "config.mesh.fsdp_min_size: must be >= 0"),
    ("unknown_pipeline", lambda t: [f"--config={TINY}", "--config.data.pipeline=tfdata"], "config.data.pipeline"),
    ("negative_seed", lambda t: [f"--config={TINY}", "--config.seed=-1"], "config.seed: must be an int >= 0"),
    ("zero_report_interval", lambda t: [f"--config={TINY}", "--config.report_every_secs=0"], "report_every_secs"),
    ("population_varies_width", lambda t: [f"--config={TINY}", "--population=seed=0,1 model.width=32,64"],
     "config.population.product.model.width: a population cannot vary model.width"),
    ("population_bad_value", lambda t: [f"--config={TINY}", "--population=seed=zero"],
     "config.population.product: values of seed must be Python literals"),
    ("population_zip_lengths", lambda t: [f"--config={TINY}", "--population_zip=seed=0,1 optim.lr=1e-3"],
     "config.population.zip: zipped lists must have one length"),
    ("workdir_is_a_file", lambda t: [f"--config={TINY}", f"--workdir={write(t / 'run', 'x')}"], "is a file"),
    ("workdir_under_a_file", lambda t: [f"--config={TINY}", f"--workdir={write(t / 'f', 'x')}/run"],
     "cannot be written"),
]


def run_in_process(argv, monkeypatch, capsys):
  """main.py's parsing and main() on argv, as `python main.py argv` would run them; returns (exit code, stderr)."""
  argv = ["main.py"] + argv
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads --config.* overrides from sys.argv
  main.FLAGS.unparse_flags()
  for name in [n for n in main.FLAGS if n.startswith("config.")]:  # a case's overrides, defined as flags
    delattr(main.FLAGS, name)
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    main.main(main.parse_flags(argv))
  return e.value.code, capsys.readouterr().err


def check_one_error_line(code, err, expected):
  lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
  assert code not in (0, None), err[-2000:]
  assert "Traceback" not in err, err[-3000:]
  assert len(lines) == 1, err[-2000:]
  assert expected in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_in_process(case, tmp_path, monkeypatch, capsys):
  _, argv, expected = case
  argv = argv(tmp_path)
  before = sorted(os.listdir(tmp_path))
  if not any(a.startswith("--workdir=") for a in argv):
    argv.append(f"--workdir={tmp_path / 'run'}")
  code, err = run_in_process(argv, monkeypatch, capsys)
  check_one_error_line(code, err, expected)
  assert sorted(os.listdir(tmp_path)) == before   # no workdir written, nothing else touched


def test_missing_omniglot_source(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("ICLSCALE_OMNIGLOT_DIR", str(tmp_path / "no_omniglot"))
  code, err = run_in_process([f"--config={CFG}/chan2024_omniglot.py:tiny", "--config.mesh.num_devices=1",
                              f"--workdir={tmp_path / 'run'}"], monkeypatch, capsys)
  check_one_error_line(code, err, "Omniglot source not found")
  assert not (tmp_path / "run").exists()


def test_workdir_of_a_different_config_is_refused_and_kept(tmp_path, monkeypatch, capsys):
  run = tmp_path / "run"
  run.mkdir()
  record = write(run / "config.json", json.dumps({"seed": 0, "task.name": "bursty"}))
  code, err = run_in_process([f"--config={TINY}", f"--workdir={run}"], monkeypatch, capsys)
  check_one_error_line(code, err, "holds a run with a different config")
  assert os.listdir(run) == ["config.json"] and open(record).read() == json.dumps({"seed": 0, "task.name": "bursty"})


@pytest.fixture
def read_only_dir(tmp_path):
  path = tmp_path / "ro"
  path.mkdir()
  if os.geteuid() == 0:  # root writes through permission bits: a read-only mount stops it
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=False,
                      capture_output=True).returncode != 0:
      pytest.skip("cannot mount a read-only tmpfs here")
    yield path
    subprocess.run(["umount", str(path)], check=False)
  else:
    path.chmod(0o555)
    yield path
    path.chmod(0o755)


def test_read_only_workdir(read_only_dir, monkeypatch, capsys):
  code, err = run_in_process([f"--config={TINY}", f"--workdir={read_only_dir}/run"], monkeypatch, capsys)
  check_one_error_line(code, err, "cannot be written")
  assert os.listdir(read_only_dir) == []


# The same checks through `python main.py`, including the overrides of main.py's default config (applied when the
# flags are defined) and config files that fail to load.
SUBPROCESS = ["unknown_top_key", "unknown_nested_key", "missing_config_file", "config_syntax_error", "unknown_scale",
              "negative_per_decade", "workdir_is_a_file", "unknown_flag"]


def test_bad_inputs_through_main_py(tmp_path):
  from conftest import child_xla_flags  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=child_xla_flags())
  cases = {c[0]: c for c in CASES}
  runs = []
  for name in SUBPROCESS:
    _, argv, expected = cases[name]
    d = tmp_path / name
    d.mkdir()
    argv = argv(d)
    if name in ("unknown_top_key", "unknown_nested_key"):   # the default config, overridden at flag definition
      argv = [a for a in argv if not a.startswith("--config=")]
    if not any(a.startswith("--workdir=") for a in argv):
      argv.append(f"--workdir={d / 'run'}")
    before = sorted(os.listdir(d))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    runs.append((name, proc, expected, d, before))
  try:
    for name, proc, expected, d, before in runs:
      _, err = proc.communicate(timeout=240)
      check_one_error_line(proc.returncode, err, expected)
      assert proc.returncode == 2 and sorted(os.listdir(d)) == before, name
  finally:
    for _, proc, *_ in runs:
      if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
