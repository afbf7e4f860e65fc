#!/usr/bin/env bash
# Cloud TPU VM lifecycle for iclscale runs (gcloud GA syntax). Every command is idempotent where gcloud allows.
#
#   launch/tpu.sh create  NAME ZONE ACCELERATOR [RUNTIME] [--spot]   # e.g. v5litepod-8 v2-alpha-tpuv5-lite
#   launch/tpu.sh setup   NAME ZONE                # copy this repo to every worker, venv + jax[tpu] + requirements
#   launch/tpu.sh run     NAME ZONE -- ARGS...     # python main.py ARGS on all workers, detached (tmux), logs per worker
#   launch/tpu.sh resume  NAME ZONE -- ARGS...     # the same command again: main.py resumes from the workdir
#   launch/tpu.sh logs    NAME ZONE [WORKER]       # tail a worker's log
#   launch/tpu.sh tensorboard NAME ZONE WORKDIR    # port-forward TensorBoard from worker 0 to localhost:6006
#   launch/tpu.sh delete  NAME ZONE
#
# Multi-host: main.py calls jax.distributed.initialize() when the TPU runtime says there are several workers
# (TPU_WORKER_HOSTNAMES); each host feeds only its rows of the global batch. Use a gs:// --workdir (or a shared
# mount) so every host sees the same checkpoints; spot/preemptible VMs get SIGTERM, main.py saves and exits, and
# `resume` continues from that checkpoint.
set -euo pipefail
cmd=${1:?command}; name=${2:?name}; zone=${3:?zone}; shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }

case "$cmd" in
  create)
    accel=${1:?accelerator type}; runtime=${2:-tpu-ubuntu2204-base}; extra=${3:-}
    gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accel" --version "$runtime" $extra ;;
  setup)
    tar -C "$repo" --exclude=runs --exclude=.git -czf /tmp/iclscale.tgz .
    gcloud compute tpus tpu-vm scp /tmp/iclscale.tgz "$name":~/iclscale.tgz --zone "$zone" --worker=all
    ssh_all 'mkdir -p ~/iclscale && tar -xzf ~/iclscale.tgz -C ~/iclscale && cd ~/iclscale &&
      ( [ -d ~/venv ] || python3 -m venv ~/venv ) && . ~/venv/bin/activate && pip install -q -U pip &&
      grep -v "^jax\[cpu\]" requirements.txt > /tmp/req.txt && pip install -q "jax[tpu]" "orbax-checkpoint[gcp]" -r /tmp/req.txt' ;;
  run|resume)
    [ "${1:-}" = "--" ] && shift
    args=$(printf '%q ' "$@")
    ssh_all "tmux kill-session -t iclscale 2>/dev/null || true; cd ~/iclscale && . ~/venv/bin/activate &&
      tmux new-session -d -s iclscale \"python main.py $args 2>&1 | tee -a ~/iclscale.w\$(hostname | grep -o '[0-9]*\$').log\"" ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker="${1:-0}" --command 'tail -n 50 ~/iclscale.w*.log' ;;
  tensorboard)
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=0 -- -L 6006:localhost:6006 \
      ". ~/venv/bin/activate && tensorboard --logdir ${1:?workdir} --port 6006" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
