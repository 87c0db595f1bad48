#!/usr/bin/env bash
# Experiment grids in several processes at once on this host.
#
#   launch/run_grids.sh [--streams 2] [--threads 1] [--out_dir DIR] GRID.yaml [GRID.yaml ...]
#
# Starts --streams processes; each works through the grid files in the given order with
# python -m coco_tf.experiments (TF_NUM_INTRAOP_THREADS=--threads). Runs another process is training
# hold a flock on their grid.lock and are skipped, so every run trains once; grids sharing an
# out_dir share equal cells. Rerun the same command to continue. Runs from the repository root
# (grid files' data paths are relative to it). Logs: <--out_dir or runs/grids>/streams/<i>.log.
# Ctrl-C / SIGTERM stops every process it started.
# Exit status: 0 when every stream finished every grid, 1 otherwise.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python}"
STREAMS=2
THREADS=1
OUT_DIR=""
GRIDS=()

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --streams) STREAMS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --out_dir) OUT_DIR="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "run_grids.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) GRIDS+=("$1"); shift ;;
  esac
done
[[ ${#GRIDS[@]} -gt 0 ]] || { echo "run_grids.sh: give at least one grid file" >&2; usage >&2; exit 2; }
[[ "$STREAMS" =~ ^[1-9][0-9]*$ ]] || { echo "run_grids.sh: --streams must be a positive integer, got '$STREAMS'" >&2; exit 2; }
[[ "$THREADS" =~ ^[0-9]+$ ]] || { echo "run_grids.sh: --threads must be an integer >= 0, got '$THREADS'" >&2; exit 2; }
ABS=()
for g in "${GRIDS[@]}"; do
  [[ -f "$g" ]] || { echo "run_grids.sh: grid file not found: $g" >&2; exit 2; }
  ABS+=("$(cd "$(dirname "$g")" && pwd)/$(basename "$g")")
done
if [[ -n "$OUT_DIR" ]]; then mkdir -p "$OUT_DIR"; OUT_DIR="$(cd "$OUT_DIR" && pwd)"; fi

LOG_DIR="${OUT_DIR:-$ROOT/runs/grids}/streams"
mkdir -p "$LOG_DIR"
cd "$ROOT"
export PYTHON OUT_DIR PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ "$THREADS" != 0 ]]; then
  export TF_NUM_INTRAOP_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
fi

# One stream: every grid in order (a new process group, so that stopping it stops its trainers).
STREAM='s=0; for g in "$@"; do "$PYTHON" -m coco_tf.experiments --grid "$g" ${OUT_DIR:+--out_dir "$OUT_DIR"} || s=1; done; exit $s'
PIDS=()
stop() { trap - INT TERM; for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; exit 130; }
trap stop INT TERM
for i in $(seq 1 "$STREAMS"); do
  setsid bash -c "$STREAM" stream "${ABS[@]}" > "$LOG_DIR/$i.log" 2>&1 &
  PIDS+=($!)
  echo "stream $i: pid $! log $LOG_DIR/$i.log"
  sleep 2  # stagger: the first stream takes the first run's lock before the next looks
done
status=0
for p in "${PIDS[@]}"; do wait "$p" || status=1; done
exit $status
