#!/usr/bin/env bash
# The whole unCLIP stack at `tiny` size on a CPU, end to end, in a few minutes:
#   shapes data -> CLIP -> embed -> prior, decoder, 16->64 upsampler -> pipeline folder -> sampled PNGs.
# Usage: bash launch/tiny_stack.sh [OUT_DIR] [STEPS]     (run from the repository root, venv active)
# Longer runs (STEPS=4000) draw recognisable shapes; the defaults only show that every stage runs.
set -euo pipefail
OUT=${1:-runs/tiny_stack}
STEPS=${2:-200}
CONFIGS="$(cd "$(dirname "$0")/.." && pwd)/configs"
# No XLA_FLAGS here: each CLI splits the CPU into min(2, cores) devices unless you set XLA_FLAGS yourself
# (unclip_jax/xla_flags.py). At tiny size 8 virtual devices ran CLIP 3x, the prior 2.4x, the decoder 1.5x slower.
mkdir -p "$OUT"
cd "$OUT"

python -m unclip_jax.data.prepare shapes --data_dir data --image_size 32
python -m unclip_jax.data.prepare shapes --data_dir data --image_size 64 --train_size 5000 --heldout_size 500
python -m unclip_jax.train --config "$CONFIGS/clip.py:tiny" --workdir clip --data_dir data --config.train.steps="$STEPS"
# (training resumes and prepare reuses what exists, so the script can be run again; these two refuse to overwrite)
[ -d data/embedded/shapes32 ] || python -m unclip_jax.embed --checkpoint clip/export --data_dir data \
  --dataset shapes --dataset_config 32 --name shapes32
python -m unclip_jax.train --config "$CONFIGS/prior.py:tiny" --workdir prior --data_dir data --config.train.steps="$STEPS"
python -m unclip_jax.train --config "$CONFIGS/decoder.py:tiny" --workdir decoder --data_dir data --config.train.steps="$STEPS"
python -m unclip_jax.train --config "$CONFIGS/upsampler.py:tiny" --workdir sr --data_dir data \
  --config.data.config=64_n5000_h500_s0 --config.train.steps="$STEPS"
[ -f pipeline/pipeline.json ] || python -m unclip_jax.pipeline assemble --clip clip/export --prior prior/export \
  --decoder decoder/export --sr-64-256 sr/export --out pipeline
python -m unclip_jax.sample --checkpoint pipeline --prompt "a red circle" --prompt "two blue squares" \
  --prompt "a yellow triangle left of a green circle" --num 4 --out samples
echo "done: $OUT/samples/grid.png (decoder training grids in $OUT/decoder/samples/)"
