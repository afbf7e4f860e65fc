#!/usr/bin/env bash
# The life of an iclscale run on a Cloud TPU VM or pod slice (gcloud GA `compute tpus` commands).
#
#   launch/tpu.sh [--dry-run] COMMAND NAME ZONE [ARGS...]
#
#   create NAME ZONE TYPE [RUNTIME] [--spot]      TPU VM now (on-demand, or spot) e.g. TYPE=v5litepod-16
#   queue  NAME ZONE TYPE [RUNTIME] [--spot]      queued resource NAME (node NAME): provisioned when capacity frees up
#   setup  NAME ZONE                              this repo + ~/venv + jax[tpu] + requirements on every worker
#   run    NAME ZONE -- MAIN_ARGS...              python main.py MAIN_ARGS on every worker, detached;
#                                                 worker w logs to ~/iclscale_logs/worker_<w>.log
#   logs   NAME ZONE [WORKER]                     follow one worker's log (default 0)
#   status NAME ZONE                              the run on worker 0: running | done | preempted | failed:N | idle
#   tensorboard NAME ZONE LOGDIR                  TensorBoard on worker 0, forwarded to localhost:6006
#   watch  NAME ZONE TYPE [RUNTIME] [--spot] -- MAIN_ARGS...
#                                                 keep a queued-resource run alive until it is done: (re)create the
#                                                 request when it is missing, suspended (spot preemption) or failed,
#                                                 set up fresh workers, and re-run the same command, which resumes
#                                                 from the checkpoints in its (gs://) workdir
#   delete NAME ZONE                              delete the queued resource (if any) and the TPU VM
#
# --dry-run prints every command (one per line, shell-quoted) instead of running it. ICLSCALE_WATCH_INTERVAL sets
# the watcher's polling period in seconds (default 60). Multi-host: every worker runs the same main.py command;
# JAX detects the slice from the TPU metadata and main.py joins the processes (jax.distributed). Use a gs:// --workdir:
# every worker must see the same checkpoints, and a re-created spot slice starts from fresh disks.
set -euo pipefail

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
cmd=${1:?usage: tpu.sh [--dry-run] COMMAND NAME ZONE ...}; name=${2:?NAME}; zone=${3:?ZONE}; shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
interval=${ICLSCALE_WATCH_INTERVAL:-60}
DEFAULT_RUNTIME=v2-alpha-tpuv5-lite   # the v5e runtime; v4 slices use tpu-ubuntu2204-base

# Prints the command shell-quoted; runs it unless --dry-run.
x() {
  printf '%q ' "$@" | sed 's/ $//'; echo
  if [ "$DRY" = 0 ]; then "$@"; fi
}
# Like x, but its output is wanted (--dry-run: prints the command on stderr and answers with $1, e.g. a state).
q() {
  local answer=$1; shift
  if [ "$DRY" = 1 ]; then { printf '%q ' "$@" | sed 's/ $//'; echo; } >&2; echo "$answer"; else "$@"; fi
}
ssh_all() { x gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"; }

# Parses TYPE [RUNTIME] [--spot] into accel, runtime, spot; leaves MAIN_ARGS (after --) in main_args.
parse_slice() {
  accel=""; runtime=$DEFAULT_RUNTIME; spot=(); main_args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --spot) spot=(--spot) ;;
      --) shift; main_args=("$@"); break ;;
      *) if [ -z "$accel" ]; then accel=$1; else runtime=$1; fi ;;
    esac
    shift
  done
  [ -n "$accel" ] || { echo "error: accelerator type missing (e.g. v5litepod-16, v4-32)" >&2; exit 2; }
}

# The script every worker runs: worker number from the TPU metadata, one log per worker, and a status file that
# tells the watcher whether the command finished, was preempted (main.py saved and exited 0) or failed.
worker_script() {
  local args
  args=$(printf '%q ' "$@")
  cat <<EOF
#!/usr/bin/env bash
w=\$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)
mkdir -p ~/iclscale_logs && cd ~/iclscale && . ~/venv/bin/activate
log=~/iclscale_logs/worker_\$w.log
echo "=== \$(date -u +%FT%TZ) python main.py ${args}" >> "\$log"
python main.py ${args}>> "\$log" 2>&1
rc=\$?
if [ \$rc -ne 0 ]; then s=failed:\$rc; elif tail -n 50 "\$log" | grep -q "Preempted: saved step"; then s=preempted; else s=done; fi
echo \$s > ~/iclscale_logs/status_\$w
EOF
}

do_create() {
  parse_slice "$@"
  x gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$accel" --version="$runtime" \
    ${spot[@]+"${spot[@]}"}
}
do_queue() {
  parse_slice "$@"
  x gcloud compute tpus queued-resources create "$name" --zone="$zone" --node-id="$name" \
    --accelerator-type="$accel" --runtime-version="$runtime" ${spot[@]+"${spot[@]}"}
}
do_setup() {
  local tgz=${TMPDIR:-/tmp}/iclscale_$name.tgz
  x tar -C "$repo" --exclude=./runs --exclude=./.git -czf "$tgz" .
  x gcloud compute tpus tpu-vm scp "$tgz" "$name:iclscale.tgz" --zone="$zone" --worker=all
  ssh_all 'mkdir -p ~/iclscale && tar -xzf ~/iclscale.tgz -C ~/iclscale && cd ~/iclscale &&
{ [ -d ~/venv ] || python3 -m venv ~/venv; } && . ~/venv/bin/activate && pip install -q -U pip &&
grep -v "^jax" requirements.txt > /tmp/iclscale_req.txt && pip install -q "jax[tpu]" -r /tmp/iclscale_req.txt &&
python -c "import jax; print(jax.process_index(), jax.device_count())"'
}
do_run() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || { echo "error: run needs main.py arguments after --, e.g. --workdir=gs://BUCKET/run" >&2; exit 2; }
  local script=${TMPDIR:-/tmp}/iclscale_run_$name.sh
  worker_script "$@" > "$script"
  x gcloud compute tpus tpu-vm scp "$script" "$name:iclscale_run.sh" --zone="$zone" --worker=all
  ssh_all 'rm -f ~/iclscale_logs/status_*; setsid nohup bash ~/iclscale_run.sh > /dev/null 2>&1 < /dev/null &'
}
probe() {  # one word about the run on worker 0
  q "${1:-idle}" gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=0 --command='
if pgrep -f "[p]ython main.py" > /dev/null; then echo running; elif [ -f ~/iclscale_logs/status_0 ]; then
cat ~/iclscale_logs/status_0; elif [ -d ~/venv ]; then echo idle; else echo fresh; fi'
}
qr_state() {
  q "${1:-ACTIVE}" gcloud compute tpus queued-resources describe "$name" --zone="$zone" --format='value(state.state)' \
    || echo MISSING
}
do_delete() {
  x gcloud compute tpus queued-resources delete "$name" --zone="$zone" --force --quiet --async || true
  x gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet || true
}

do_watch() {
  parse_slice "$@"
  [ ${#main_args[@]} -gt 0 ] || { echo "error: watch needs main.py arguments after --" >&2; exit 2; }
  local state run slice=("$accel" "$runtime" ${spot[@]+"${spot[@]}"}) args=("${main_args[@]}")
  while true; do
    state=$(qr_state)
    echo "queued resource $name: ${state:-MISSING}"
    case "$state" in
      ACTIVE)
        run=$(probe)
        echo "run on worker 0: $run"
        case "$run" in
          done) echo "run finished; delete the slice with: launch/tpu.sh delete $name $zone"; return 0 ;;
          failed:*) echo "error: the run failed ($run); see launch/tpu.sh logs $name $zone" >&2; return 1 ;;
          fresh) do_setup; do_run "${args[@]}" ;;
          idle|preempted) do_run "${args[@]}" ;;
        esac ;;
      MISSING|"") do_queue "${slice[@]}" ;;
      SUSPENDED|FAILED)  # a preempted spot slice does not come back by itself: ask for a new one
        x gcloud compute tpus queued-resources delete "$name" --zone="$zone" --force --quiet
        do_queue "${slice[@]}" ;;
      *) ;;  # ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING, CREATING, SUSPENDING, DELETING: wait
    esac
    [ "$DRY" = 1 ] && return 0  # --dry-run: one round (an ACTIVE slice, an idle worker)
    sleep "$interval"
  done
}

case "$cmd" in
  create) do_create "$@" ;;
  queue) do_queue "$@" ;;
  setup) do_setup ;;
  run) do_run "$@" ;;
  logs) x gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker="${1:-0}" \
          --command="tail -n 200 -F ~/iclscale_logs/worker_${1:-0}.log" ;;
  status) probe ;;
  tensorboard) x gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=0 \
                 --command=". ~/venv/bin/activate && tensorboard --logdir=${1:?LOGDIR} --port=6006" -- -L 6006:localhost:6006 ;;
  watch) do_watch "$@" ;;
  delete) do_delete ;;
  *) echo "error: unknown command $cmd (create queue setup run logs status tensorboard watch delete)" >&2; exit 2 ;;
esac
