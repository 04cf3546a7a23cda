#!/usr/bin/env bash
# The quality ladder of docs/results.md: evaluate each trained model on the same 64 held-out prompts with the
# same judge and seed, at 8/32/128 steps, with the knob that matches real text's entropy found by bisection,
# plus prompt sensitivity (and noise-level diagnostics for DIMBA).
#   scripts/quality_ladder.sh RUNS_DIR JUDGE_CKPT NAME:KNOB [NAME:KNOB ...]
# e.g. scripts/quality_ladder.sh runs runs/judge/checkpoints/last.ckpt gauss1000:x0_temperature ar1000:top_p
# Each NAME is a run folder RUNS_DIR/NAME/checkpoints/last.ckpt; results go to RUNS_DIR/eval_NAME.
set -euo pipefail
runs=$1; judge=$2; shift 2
for item in "$@"; do
  name=${item%%:*}; knob=${item##*:}
  extra=()
  case $name in gauss*|hyb*) extra+=(--diagnose true);; esac
  dimba eval --ckpt_path "$runs/$name/checkpoints/last.ckpt" --judge_ckpt_path "$judge" \
    --grid '{steps: [8, 32, 128], sampler: [ddim], reveal: [random, confidence]}' --ablations '{}' \
    --match_entropy "$knob" --sensitivity true "${extra[@]}" \
    --num_prompts 64 --batch_size 32 --sampling.seed 0 --out_dir "$runs/eval_$name"
done
