#!/usr/bin/env bash
# Parameter-server training on this host: N workers, P parameter servers (default 2), one chief.
#
#   launch/run_cluster.sh --workers 10 [--ps 2] [--config FILE] [--set key=value]... [--model_dir DIR]
#                         [--host 127.0.0.1]
#
# Writes each process's TF_CONFIG (<model_dir>/logs/tf_config.<task>.json), starts the ps and
# worker servers (python -m coco_tf.training.server) on free ports, then the chief
# (python -m coco_tf.train --set runtime.strategy=ps), and stops every process it started when the
# chief ends, when anything fails, or on Ctrl-C / SIGTERM. Logs: <model_dir>/logs/<task>.log.
# Exit status: the chief's (0 ok or already finished, 2 bad config / data / TF_CONFIG, 3 cluster
# failure or a task unreachable within runtime.cluster_connect_timeout: run the same command again to
# resume from the latest checkpoint in <model_dir>/ckpt), 4 <model_dir> could not be written (disk
# full, permissions: free space and run again to resume); 2 for a bad argument of this script;
# 130 / 143 on Ctrl-C / SIGTERM.
#
# Security: TF's gRPC servers are unauthenticated and unencrypted. Everything listens on 127.0.0.1
# unless --host says otherwise; put cluster ports on a private network only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python}"
WORKERS=""
PS=2
HOST=127.0.0.1
MODEL_DIR=""
CONFIG=""
SETS=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
need_value() {  # flag, number of arguments left
  [[ $2 -ge 2 ]] || { echo "run_cluster.sh: $1 needs a value" >&2; usage >&2; exit 2; }
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) need_value "$1" $#; WORKERS="$2"; shift 2 ;;
    --ps) need_value "$1" $#; PS="$2"; shift 2 ;;
    --host) need_value "$1" $#; HOST="$2"; shift 2 ;;
    --model_dir) need_value "$1" $#; MODEL_DIR="$2"; shift 2 ;;
    --config) need_value "$1" $#; CONFIG="$2"; shift 2 ;;
    --set) need_value "$1" $#; SETS+=("$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_cluster.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n "$WORKERS" ]] || { echo "run_cluster.sh: --workers N (N >= 1) is required" >&2; usage >&2; exit 2; }
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || { echo "run_cluster.sh: --workers N (N >= 1) is required, got '$WORKERS'" >&2; exit 2; }
[[ "$PS" =~ ^[1-9][0-9]*$ ]] || { echo "run_cluster.sh: --ps must be >= 1, got '$PS'" >&2; exit 2; }
MODEL_DIR="${MODEL_DIR:-runs/ps_w${WORKERS}}"
LOGS="$MODEL_DIR/logs"
mkdir -p "$LOGS"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TF_USE_LEGACY_KERAS=1 GRPC_FAIL_FAST=use_caller TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ ${#PIDS[@]} -gt 0 ]] && echo "run_cluster.sh: stopped ${#PIDS[@]} process(es)" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "run_cluster.sh: interrupted" >&2; exit 130' INT
trap 'echo "run_cluster.sh: terminated" >&2; exit 143' TERM

CLUSTER="$("$PYTHON" "$HERE/tf_config.py" cluster --ps "$PS" --workers "$WORKERS" --host "$HOST")"
task_config() {  # type index -> writes and prints the file holding that task's TF_CONFIG
  local f="$LOGS/tf_config.$1-$2.json"
  "$PYTHON" "$HERE/tf_config.py" task "$CLUSTER" "$1" "$2" > "$f"
  echo "$f"
}

for ((i = 0; i < PS; i++)); do
  f="$(task_config ps "$i")"
  TF_CONFIG="$(cat "$f")" "$PYTHON" -m coco_tf.training.server > "$LOGS/ps-$i.log" 2>&1 &
  PIDS+=("$!")
done
for ((i = 0; i < WORKERS; i++)); do
  f="$(task_config worker "$i")"
  TF_CONFIG="$(cat "$f")" "$PYTHON" -m coco_tf.training.server > "$LOGS/worker-$i.log" 2>&1 &
  PIDS+=("$!")
done
echo "run_cluster.sh: $PS ps + $WORKERS workers on $HOST (pids ${PIDS[*]}); logs in $LOGS" >&2
echo "${PIDS[@]}" > "$LOGS/server_pids"

CHIEF_ARGS=(-m coco_tf.train --set runtime.strategy=ps --model_dir "$MODEL_DIR")
[[ -n "$CONFIG" ]] && CHIEF_ARGS+=(--config "$CONFIG")
for s in "${SETS[@]+"${SETS[@]}"}"; do CHIEF_ARGS+=(--set "$s"); done
f="$(task_config chief 0)"
# The chief runs in the background so that the traps fire while it runs; its output goes to the
# terminal and to logs/chief.log.
TF_CONFIG="$(cat "$f")" "$PYTHON" "${CHIEF_ARGS[@]}" > >(tee -a "$LOGS/chief.log") 2> >(tee -a "$LOGS/chief.log" >&2) &
CHIEF=$!
PIDS+=("$CHIEF")
echo "$CHIEF" > "$LOGS/chief_pid"

# A server that exits while the chief runs is reported; a dead PS makes the chief stop (exit 3),
# a dead worker is retried by the coordinator.
set +e
wait "$CHIEF"
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  echo "run_cluster.sh: chief exited with status $rc (see $LOGS/chief.log)" >&2
  [[ $rc -eq 3 ]] && echo "run_cluster.sh: run the same command again to resume from the latest checkpoint" >&2
fi
exit "$rc"
