#!/usr/bin/env bash
# N CPU processes on this machine forming one JAX cluster (gloo collectives), e.g.
#   launch/local_multiprocess.sh 2 --config=configs/joint_grpo.py --workdir=runs/mp
# Arguments after N go to `python -m lapdog_jax.main`. Each process's output is prefixed with
# [pI]. If any process fails, the others are stopped and the script exits non-zero.
# Devices per process: XLA_FLAGS=--xla_force_host_platform_device_count=K (default 1).
# Environment: PYTHON (default python), PORT (default: a free port), GRACE_S (default 10).
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [--config=... --workdir=... other lapdog_jax.main flags]" >&2
  exit 2
fi
N=$1
shift
PYTHON=${PYTHON:-python}
GRACE_S=${GRACE_S:-10}
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

set -m  # each process in its own process group, so stopping it stops python and sed alike
pids=()

# SIGTERM first (the trainer checkpoints on it), SIGKILL after GRACE_S: a process blocked in a
# collective with a dead peer never gets to act on SIGTERM.
stop_all() {
  local p t
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for ((t = 0; t < GRACE_S * 2; t++)); do
    for p in "${pids[@]}"; do kill -0 -- "-$p" 2>/dev/null && break; done || return 0
    sleep 0.5
  done
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  (
    set +m  # keep python and sed in this subshell's process group
    LAPDOG_COORDINATOR="127.0.0.1:${PORT}" LAPDOG_NUM_PROCESSES="$N" LAPDOG_PROCESS_ID="$i" \
      JAX_PLATFORMS=cpu "$PYTHON" -m lapdog_jax.main "$@" 2>&1 | sed -u "s/^/[p$i] /"
    exit "${PIPESTATUS[0]}"
  ) &
  pids+=($!)
done

for ((k = 0; k < N; k++)); do
  if ! wait -n; then
    echo "a process failed; stopping the others" >&2
    stop_all
    wait 2>/dev/null || true
    exit 1
  fi
done
