#!/usr/bin/env bash
# N processes on this machine, each with D CPU devices, training together over gloo on 127.0.0.1: the
# multi-host code path without a cluster (what tests/train/test_multiprocess.py does).
# Usage: bash launch/local_multiprocess.sh N D -- --config configs/clip.py:tiny --workdir runs/mp --data_dir data
set -euo pipefail
N=${1:?number of processes}; D=${2:?CPU devices per process}; shift 2; [ "${1:-}" = "--" ] && shift
PORT=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$D" \
  UNCLIP_JAX_COORDINATOR="127.0.0.1:$PORT" UNCLIP_JAX_NUM_PROCESSES="$N" UNCLIP_JAX_PROCESS_ID="$i" \
    python -m unclip_jax.train --no_progress "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
