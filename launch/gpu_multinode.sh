#!/usr/bin/env bash
# One process per GPU node; run this same command on every node (e.g. from your scheduler), with
#   NNODES           number of nodes
#   NODE_RANK        this node's index, 0..NNODES-1
#   COORDINATOR      host:port of node 0, reachable from every node
# Each process drives all GPUs of its node; the global batch in the config is split over every GPU.
# Usage: NNODES=2 NODE_RANK=0 COORDINATOR=node0:12345 bash launch/gpu_multinode.sh \
#          --config configs/decoder.py:karlo --workdir /shared/runs/decoder --data_dir /shared/data
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${COORDINATOR:?set COORDINATOR (host:port of node 0)}"
export UNCLIP_JAX_COORDINATOR="$COORDINATOR" UNCLIP_JAX_NUM_PROCESSES="$NNODES" UNCLIP_JAX_PROCESS_ID="$NODE_RANK"
# The workdir and data_dir must be on a filesystem every node sees (checkpoints are written by all).
exec python -m unclip_jax.train "$@"
