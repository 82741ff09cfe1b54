#!/usr/bin/env bash
# The shapes demo pipeline, trained end to end on a CPU with the project's own commands and the `demo`
# presets, then evaluated and packed into the package (the default --checkpoint of sample/zeroshot/evaluate):
#   shapes data (32 px and 64 px; the decoder's with unnamed colours) -> CLIP, reranking CLIP -> embed -> prior,
#   32 px decoder, 32->64 upsampler
#   -> pipeline folder -> sample grid -> evaluate --suite all (README table) -> training curves
#   -> unclip_jax/assets/demo (EMA weights as float16, with the recipe, commit and evaluation numbers)
# Usage: bash launch/train_demo.sh [OUT_DIR]     (from the repository root, venv active)
# More training where the hardware allows (a GPU): DEMO_<STAGE>_ARGS adds config overrides to that stage's
# `train` command (STAGE: CLIP, RERANK_CLIP, PRIOR, DECODER, SR), e.g.
#   DEMO_DECODER_ARGS="--config.train.steps=72000" bash launch/train_demo.sh runs/demo_long
# They are recorded in every shipped stage.json (provenance.overrides). A rerun resumes under `train`'s own rules: a
# larger train.steps extends a finished stage, a changed model or data field needs a new OUT_DIR.
# DEMO_<STAGE>_LEGS="7200 12000" trains that stage in legs, each a `train` run to the next step count in the same
# workdir (a warm restart: each leg's cosine schedule spans its own end), as the shipped CLIP and decoder were
# trained; the README has the line that reproduces the shipped pipeline. A rerun skips the legs already passed.
# DEMO_NOTES="..." is recorded as provenance.notes (say there what was reused or run beside other work).
# Rerunning resumes: data and embeddings are reused, each stage continues from its latest checkpoint
# (a finished stage just re-exports), finished evaluation suites and packing are kept.
# Per stage: OUT/STAGE/metrics.jsonl, OUT/decoder/samples/*.png (training grids: data above, guided samples
# below), OUT/STAGE/export (the weights the next step loads), OUT/logs/*.log, OUT/logs/times.txt (seconds).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT=${1:-runs/demo}
CONFIGS="$REPO/configs"
# XLA flags: the CLIs' CPU defaults (unclip_jax/xla_flags.py: 2 virtual devices, one per core, unless
# XLA_FLAGS is set). No YNNPACK fusion flag: on jax 0.10 `--xla_cpu_experimental_ynn_fusion_type=
# dot,eltwise,reduce` made the demo's CLIP step about 2x and its decoder step about 20% slower (README,
# "Benchmarks"); the 2026-12-02 weights were trained with it, the 2026-12-04 CLIP, prior and decoder fine-tune without.
stage_var() {  # stage_var NAME KIND: the name of the variable DEMO_<NAME>_<KIND> (bash 3, on macOS, has no ${1^^})
  printf 'DEMO_%s_%s' "$(printf %s "$1" | tr "[:lower:]" "[:upper:]")" "$2"
}
# Bad legs fail here, before any work: whole step counts, each larger than the last.
for stage in clip rerank_clip prior decoder sr; do
  var=$(stage_var "$stage" LEGS)
  previous=0
  for leg in ${!var-}; do
    case $leg in ''|*[!0-9]*) leg=0 ;; esac
    if [ "$leg" -le "$previous" ]; then
      echo "error: $var=\"${!var}\" must be increasing step counts, e.g. \"7200 12000\"" >&2
      exit 2
    fi
    previous=$leg
  done
done

mkdir -p "$OUT/logs"
cd "$OUT"

stamp() { echo "[$(date '+%F %T')] $*"; }
# run NAME CMD...: runs a step with its output appended to logs/NAME.log, and logs its wall time.
run() {
  local name=$1 start=$SECONDS
  shift
  stamp "start $name"
  "$@" >> "logs/$name.log" 2>&1 \
    || { stamp "FAILED $name (exit $?): see $OUT/logs/$name.log"; tail -n 20 "logs/$name.log"; exit 1; }
  stamp "done $name in $((SECONDS - start)) s"
  echo "$name $((SECONDS - start))" >> logs/times.txt
}
latest_checkpoint() {  # latest_checkpoint WORKDIR: the step of its newest run checkpoint (empty without one)
  find "$1/checkpoints" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | sed 's|.*/||' | grep -E '^[0-9]+$' | sort -n \
    | tail -n 1 || true
}
exported_step() {  # exported_step WORKDIR: the step its export was written at (empty without one)
  sed -n 's/^  "step": *\([0-9][0-9]*\).*/\1/p' "$1/export/stage.json" 2>/dev/null | tail -n 1
}
train() {  # train NAME CONFIG: one stage, resuming from WORKDIR=NAME, with DEMO_<NAME>_ARGS and DEMO_<NAME>_LEGS
  local name=$1 config=$2 var extra=() legs=() leg steps=() done_step exported
  var=$(stage_var "$name" ARGS)
  read -ra extra <<< "${!var-}"
  var=$(stage_var "$name" LEGS)
  read -ra legs <<< "${!var-}"
  [ ${#legs[@]} -gt 0 ] || legs=(preset)
  for leg in "${legs[@]}"; do
    done_step=$(latest_checkpoint "$name")
    if [ "$leg" != preset ]; then
      [ -n "$done_step" ] && [ "$done_step" -gt "$leg" ] && continue  # a rerun: this leg is behind the workdir
      steps=("--config.train.steps=$leg")
    fi
    run "$name" python -m unclip_jax.train --config "$CONFIGS/$config" --workdir "$name" --data_dir data --no_progress \
      ${extra[@]+"${extra[@]}"} ${steps[@]+"${steps[@]}"}
    # A stage stopped by SIGTERM or Ctrl-C saves and exits 0 without an export (an extended stage keeps its older
    # one): stop here; rerunning resumes it.
    exported=$(exported_step "$name") done_step=$(latest_checkpoint "$name")
    if [ -z "$exported" ] || [ "$exported" != "$done_step" ]; then
      stamp "$name stopped at step $done_step before its last step (export: ${exported:-none}); rerun this script" \
        "with the same DEMO_ variables to resume"
      exit 1
    fi
  done
}
# embed NAME CONFIG LOG: the prepared shapes CONFIG embedded by the trained CLIP as data/embedded/NAME. embed refuses
# to overwrite, so a completed embedding is reused (tfds builds it in an `incomplete.*` folder first).
embed() {
  local name=$1 config=$2 log=$3
  rm -rf "data/embedded/$name/incomplete."*
  [ -f "data/embedded/$name/1.0.0/dataset_info.json" ] || run "$log" python -m unclip_jax.embed \
    --checkpoint clip/export --data_dir data --dataset shapes --dataset_config "$config" --splits train,heldout \
    --name "$name" --batch_size 256
}

# 50,000 + 2,000 scenes each: 32 px for CLIP, 64 px for the upsampler; and the first 25,000 (+ 500) of the
# 32 px ones again, which CLIP embeds for the prior (embedding is the slow part).
run data32 python -m unclip_jax.data.prepare shapes --data_dir data --image_size 32
run data64 python -m unclip_jax.data.prepare shapes --data_dir data --image_size 64
run data32e python -m unclip_jax.data.prepare shapes --data_dir data --image_size 32 --train_size 25000 --heldout_size 500
train clip clip.py:demo
# A second CLIP that only rates the decoder's 8 candidates (the pipeline's `rerank_clip` stage; docs/demo.md), after
# the upsampler: 64 px scenes in 8 px patches, no hard negatives, 2000 steps. The pipeline's CLIP keeps a right
# candidate no more often than chance.
train rerank_clip clip.py:demo_rerank
embed shapes32 32_n25000_h500_s0 embed
# The decoder's own set: 50,000 scenes, half the single-object and counting ones in unnamed random colours with
# colour-free captions ("a circle", "three squares"), so it learns colour apart from shape, while every
# two-object caption names its colours (docs/demo.md). No unnamed colour comes near a held-out pair's colour.
run data32u python -m unclip_jax.data.prepare shapes --data_dir data --image_size 32 --train_size 50000 \
  --heldout_size 500 --unnamed 0.5 --unnamed_kinds single,count
embed shapes32u 32_n50000_h500_s0_u50_single-count embed_u
train prior prior.py:demo
train decoder decoder.py:demo
train sr upsampler.py:demo
[ -f pipeline/pipeline.json ] || run assemble python -m unclip_jax.pipeline assemble --clip clip/export \
  --prior prior/export --decoder decoder/export --sr-64-256 sr/export --rerank-clip rerank_clip/export --out pipeline

# The demo's sampling defaults (Karlo's 25/25/7 steps and guidance 4/8 overshoot these small models); the
# decoder draws each image 8 times, the upsampler takes all 8 to 64 px, and the reranking CLIP keeps the one it
# puts nearest the caption (docs/demo.md):
SAMPLING='{"prior": {"steps": "25", "guidance_scale": 2.0},
  "decoder": {"steps": "50", "guidance_scale": 3.0, "candidates": 8, "rate_upsampled": true},
  "sr_64_256": {"steps": "25"}}'
[ -f demo/pipeline.json ] || run pack_eval python -m unclip_jax.pipeline pack pipeline --out demo --sampling "$SAMPLING"
run sample python -m unclip_jax.sample --checkpoint demo --num 4 --out samples --overwrite \
  --prompt "a red circle" --prompt "a blue square" --prompt "a yellow triangle" \
  --prompt "a red circle above a blue square" --prompt "a green square left of a yellow circle" \
  --prompt "a blue circle and a red triangle" --prompt "three green triangles" --prompt "two white circles"
# 30 prompts per task and split (the compositional rates are then within about +-15 points at 50%),
# 6 per guidance setting: the suite samples about 400 images, each drawn 8 times by the decoder and upsampled 8
# times: about 2 h on a 2-core CPU (12 min with --decoder-candidates 1, which scores the pipeline without reranking).
# --resume: the suites a stopped run finished (eval/results.json) are kept and only the rest run.
run evaluate python -m unclip_jax.evaluate --checkpoint demo --suite all --num 30 \
  --guidance-num 6 --decoder-guidance 1,2,3,5 --prior-guidance 1,2 --out eval --no-progress --resume \
  --update-readme "$REPO/README.md"
run curves python -m unclip_jax.train.curves clip rerank_clip prior decoder sr --out curves.png

# Ship it: the evaluated weights, with the recipe, the commit and the evaluation numbers in every stage.json.
python - "$REPO" <<'PY'
import json, os, subprocess, sys
from pathlib import Path
repo = Path(sys.argv[1])
times = {}
for line in Path("logs/times.txt").read_text().split("\n"):
  if line.strip():
    name, seconds = line.split()
    times[name] = times.get(name, 0) + int(seconds)
commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
results = json.loads(Path("eval/results.json").read_text())
overrides = {stage: os.environ[f"DEMO_{stage.upper()}_ARGS"].split()
             for stage in ("clip", "rerank_clip", "prior", "decoder", "sr")
             if os.environ.get(f"DEMO_{stage.upper()}_ARGS", "").strip()}
meta = {"recipe": "launch/train_demo.sh (configs/*.py:demo)", "commit": commit, "overrides": overrides,
        "wall_seconds": times, "evaluation": {k: v for k, v in results.items() if k != "meta"}}
if os.environ.get("DEMO_NOTES", "").strip():  # how this run departed from one uninterrupted run of the script
  meta["notes"] = os.environ["DEMO_NOTES"].strip()
Path("provenance.json").write_text(json.dumps(meta, indent=2, default=str))
PY
# Packed beside the run first, then swapped in; a stage whose weights equal the installed demo's keeps its
# files (orbax names them at random), so re-shipping after retraining one stage adds only that stage to git.
rm -rf packed
REUSE=()
[ -f "$REPO/unclip_jax/assets/demo/pipeline.json" ] && REUSE=(--reuse-unchanged "$REPO/unclip_jax/assets/demo")
run pack python -m unclip_jax.pipeline pack pipeline --out packed --sampling "$SAMPLING" --meta provenance.json \
  ${REUSE[@]+"${REUSE[@]}"}
rm -rf "$REPO/unclip_jax/assets/demo"
mv packed "$REPO/unclip_jax/assets/demo"
mkdir -p "$REPO/docs/demo"
cp samples/grid.png "$REPO/docs/demo/samples.png"
cp curves.png "$REPO/docs/demo/curves.png"
[ -f eval/guidance.png ] && cp eval/guidance.png "$REPO/docs/demo/guidance.png"
stamp "done: $REPO/unclip_jax/assets/demo (du: $(du -sh "$REPO/unclip_jax/assets/demo" | cut -f1)); README table, docs/demo/*.png"
