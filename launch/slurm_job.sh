#!/usr/bin/env bash
# The SLURM batch script of launch/slurm.sh (sbatch options are given on sbatch's command line there).
#
# srun starts one task per process (per node with all its GPUs, or per GPU); inside each task
# jax.distributed.initialize() detects SLURM (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID): the coordinator is the first node of the step, the port derives from the job id. Each task logs
# to logs/<job name>_<job id>_task<t>.log (appended across requeues).
#
# Preemption / time limit: sbatch --signal=TERM@120 sends SIGTERM to every task 120 s before the end; JAX's
# preemption service makes all tasks stop at one step, main.py saves and exits 0. This script then requeues the
# job (same script, same arguments), and the re-run resumes from the checkpoints in the workdir.
set -uo pipefail
mkdir -p logs
if [ "${SLURM_NTASKS_PER_NODE:-1}" = 1 ] && [ -n "${SLURM_GPUS_PER_NODE:-}" ]; then
  # One process per node: JAX's SLURM detection would give each process one GPU; give it all of the node's.
  export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((${SLURM_GPUS_PER_NODE##*:} - 1)))
fi
srun --kill-on-bad-exit=1 --output="logs/%x_%j_task%t.log" --open-mode=append python main.py "$@"
rc=$?
log0="logs/${SLURM_JOB_NAME}_${SLURM_JOB_ID}_task0.log"
if [ $rc -eq 0 ] && tail -n 50 "$log0" 2> /dev/null | grep -q "Preempted: saved step"; then
  echo "preempted at $(date -u +%FT%TZ): requeueing job $SLURM_JOB_ID to resume"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit $rc
