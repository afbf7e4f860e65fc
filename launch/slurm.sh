#!/usr/bin/env bash
# Submit an iclscale run to SLURM GPU nodes; it requeues itself after a preemption or time-limit signal and resumes.
#
#   launch/slurm.sh [--dry-run] [--nodes N] [--gpus-per-node G] [--per-gpu] [--time HH:MM:SS]
#                   [--partition P] [--job-name NAME] -- MAIN_ARGS...
#
#   --nodes 1 (default)  one process with every local GPU (jax sees G devices), or with --per-gpu G processes
#   --nodes 2 --gpus-per-node 8              one process per node, 8 local devices each (16 global)
#   --nodes 2 --gpus-per-node 8 --per-gpu    one process per GPU (16 processes, 1 local device each)
#
# Run it from the repository root on the cluster's login node, with the venv that has jax[cuda12] active (srun
# inherits the environment). The workdir must be on a file system every node sees. --dry-run prints the sbatch
# command instead of submitting it.
set -euo pipefail
DRY=0; nodes=1; gpus=8; per_gpu=0; time_limit=24:00:00; partition=(); job=iclscale
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --nodes) nodes=$2; shift ;;
    --gpus-per-node) gpus=$2; shift ;;
    --per-gpu) per_gpu=1 ;;
    --time) time_limit=$2; shift ;;
    --partition) partition=(--partition="$2"); shift ;;
    --job-name) job=$2; shift ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (see the header of launch/slurm.sh)" >&2; exit 2 ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "error: main.py arguments missing after --, e.g. -- --workdir=/shared/runs/x" >&2; exit 2; }
if [ "$per_gpu" = 1 ]; then tasks=(--ntasks-per-node="$gpus" --gpus-per-task=1); else tasks=(--ntasks-per-node=1); fi
cmd=(sbatch --job-name="$job" --nodes="$nodes" "${tasks[@]}" --gpus-per-node="$gpus" --time="$time_limit"
     ${partition[@]+"${partition[@]}"} --signal=TERM@120 --requeue --open-mode=append --output="logs/%x_%j.log"
     "$(dirname "$0")/slurm_job.sh" "$@")
printf '%q ' "${cmd[@]}" | sed 's/ $//'; echo
if [ "$DRY" = 0 ]; then mkdir -p logs; "${cmd[@]}"; fi
