#!/usr/bin/env bash
# A TPU pod slice: the same command on every worker; JAX finds the other workers itself.
# Usage (from your machine):
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command \
#     "cd unclip_jax && bash launch/tpu_pod.sh --config configs/decoder.py:karlo --workdir gs-fuse/runs/decoder --data_dir gs-fuse/data"
# The repository must be checked out and installed (pip install -e .) on every worker, and the workdir
# and data_dir must be shared between workers.
set -euo pipefail
export UNCLIP_JAX_DISTRIBUTED=auto
exec python -m unclip_jax.train "$@"
