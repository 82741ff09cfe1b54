#!/usr/bin/env bash
# Kubernetes: renders launch/k8s/job.yaml (an indexed Job plus a headless service; pod 0 is the
# coordinator) and applies it with kubectl. Usage, from the repository root:
#   NAME=decoder NNODES=4 IMAGE=registry/unclip_jax:tag PVC=shared-runs bash launch/k8s.sh \
#     --config configs/decoder.py:karlo --workdir /shared/runs/decoder --data_dir /shared/data
# Variables: NAME (Job and service name), NNODES (pods, one training process each), IMAGE (with the
# repository at /workspace/unclip_jax, installed), PVC (a ReadWriteMany claim mounted at /shared), PORT
# (default 12355), GPU_RESOURCE (default nvidia.com/gpu), GPUS_PER_NODE (default 8), DRY_RUN=1 (print
# the manifest instead of applying it). To rerun after a failure: kubectl delete job,service "$NAME",
# then the same command; training resumes from the last complete checkpoint.
set -euo pipefail
: "${NAME:?set NAME}" "${NNODES:?set NNODES}" "${IMAGE:?set IMAGE}" "${PVC:?set PVC (a claim every pod mounts)}"
export NAME NNODES IMAGE PVC
export PORT=${PORT:-12355} GPU_RESOURCE=${GPU_RESOURCE:-nvidia.com/gpu} GPUS_PER_NODE=${GPUS_PER_NODE:-8}
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done
export TRAIN_ARGS="${args# }"
template="$(dirname "$0")/k8s/job.yaml"
# Only our ${VARS} are replaced ($JOB_COMPLETION_INDEX is left for the pod's shell).
manifest=$(python3 - "$template" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
names = ("NAME", "NNODES", "IMAGE", "PVC", "PORT", "GPU_RESOURCE", "GPUS_PER_NODE", "TRAIN_ARGS")
print(re.sub(r"\$\{(" + "|".join(names) + r")\}", lambda m: os.environ[m.group(1)], text), end="")
PY
)
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%s\n' "$manifest"
  exit 0
fi
printf '%s\n' "$manifest" | kubectl apply -f -
