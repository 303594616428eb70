#!/usr/bin/env bash
# CPPO on the shipped demo model, labelled by the signal-level scores (docs/evaluation.md), on CPU:
#
#   1. prompts  training-like prompts: lyrics + style texts ("rock, 111 bpm, D major, ...") of the procedural
#               songs the demo model was trained on (seeds 0..PROMPTS-1; held-out songs start at 900000)
#   2. mine     K takes per prompt with the demo model in Ray tasks, each scored (training/mine_candidates.py)
#   3. cppo     preference optimisation of the style_quality group (style similarity + audio quality) from
#               the mined candidates, exported as a model directory (training/cppo.py). The
#               musicality_lyrics group needs lyric-accuracy labels, which only the optional ASR scorer gives.
#   4. measure  benchmarks/demo_quality.py on held-out prompts: the shipped model against the CPPO export
#
#   WORK=/tmp/cppo-demo bash training/recipes/cppo_demo.sh
#   WORK=/tmp/cppo-200 PROMPTS=200 LR=2e-5 bash training/recipes/cppo_demo.sh          # more prompts, gentler
#   ray start --head --num-cpus 2 && RAY_AUTH_MODE=token RAY_JOB_ADDRESS=http://127.0.0.1:8265 WORK=... \
#       bash training/recipes/cppo_demo.sh      # Ray 2.60's `ray start` turns token auth on: the CLI needs the mode
#
# Each stage is skipped when its output exists; wall times go to $WORK/times (seconds per stage).
# With RAY_JOB_ADDRESS set to a cluster's job server (its dashboard, http://HOST:8265), stage 3 goes through
# `ray job submit`; stage 2 joins a running local cluster by itself (or the one RAY_ADDRESS names).
# Measured on the 2-core CPU machine (2026-12-07): see docs/evaluation.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
WORK="${WORK:-$ROOT/runs/cppo-demo}"
MODEL="${MODEL:-$ROOT/dr2studio/assets/demo}"
PROMPTS="${PROMPTS:-40}"
K="${K:-6}"
SECONDS_PER_SONG="${SECONDS_PER_SONG:-12}"
STEPS="${STEPS:-16}"
WORKERS="${WORKERS:-2}"
HELD_OUT="${HELD_OUT:-12}"
CPPO_STEPS="${CPPO_STEPS:-200}"
LR="${LR:-1e-4}"
mkdir -p "$WORK"
TIMES="$WORK/times"
touch "$TIMES"
stamp() { date +%s; }
mark() { echo "$1 $2" >> "$TIMES"; echo "stage $1: $2 s" >&2; }

if [ ! -f "$WORK/prompts.jsonl" ]; then
  t=$(stamp)
  "$PY" -m training.mine_candidates --make-prompts "$WORK/prompts.jsonl" --count "$PROMPTS" --seed 0 \
      --seconds "$SECONDS_PER_SONG"
  mark prompts $(( $(stamp) - t ))
fi

if [ ! -f "$WORK/mined/candidates.jsonl" ]; then
  t=$(stamp)
  "$PY" -m training.mine_candidates --prompts "$WORK/prompts.jsonl" --model "$MODEL" --k "$K" \
      --out "$WORK/mined" --workers "$WORKERS" --steps "$STEPS" --seconds "$SECONDS_PER_SONG"
  mark mine $(( $(stamp) - t ))
fi

if [ ! -f "$WORK/export/model.safetensors" ]; then
  t=$(stamp)
  ARGS=(-m training.cppo --config training/configs/cppo_demo.json --storage-path "$WORK" --export-dir "$WORK/export"
        --max-steps "$CPPO_STEPS" --set preferences="$WORK/mined/candidates.jsonl" --set init_from="$MODEL" --set lr="$LR"
        --set max_frames=$(( SECONDS_PER_SONG * 40 )))
  if [ -n "${RAY_JOB_ADDRESS:-}" ]; then
    # the checkout travels as the job's working directory, without its virtualenv, git folder and runs;
    # WORK and MODEL must be paths the cluster's nodes can read (on one machine they are)
    "${RAY:-ray}" job submit --address "$RAY_JOB_ADDRESS" --working-dir "$ROOT" \
        --runtime-env-json '{"excludes": [".venv", ".git", "runs"]}' \
        -- python "${ARGS[@]}"
  else
    "$PY" "${ARGS[@]}"
  fi
  mark cppo $(( $(stamp) - t ))
fi

if [ ! -f "$WORK/heldout.json" ]; then
  t=$(stamp)
  "$PY" benchmarks/demo_quality.py --model "$MODEL" --compare cppo="$WORK/export" --count "$HELD_OUT" \
      --seconds "$SECONDS_PER_SONG" --steps "$STEPS" --no-random --json "$WORK/heldout.json" | tee "$WORK/heldout.txt"
  mark measure $(( $(stamp) - t ))
fi
cat "$WORK/heldout.txt"
