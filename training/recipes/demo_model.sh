#!/usr/bin/env bash
# Reproduce the demo model shipped in dr2studio/assets/demo/ with dr2studio's own pipelines, on CPU.
#
#   bash training/recipes/demo_model.sh                 # work folder runs/demo, installs into the package
#   DEMO_WORK=/tmp/demo DEMO_INSTALL=0 bash training/recipes/demo_model.sh   # keep the package untouched
#
# Stages (each a separate, resumable command; rerunning the script skips finished stages):
#   1. 400 procedural songs (seeds 0..399, 10-30 s, 16 kHz)      training/synth_songs.py
#   2. our own phoneme table + tag style encoder                   training/recipes/demo_assets.py
#   3. VAE (8 kHz, 40 Hz x 32 latents), 700 + 1100 steps, 2 CPU workers  training/vae.py (Ray Train)
#   4. latents rescaled to unit std (exact re-parametrisation)     training/recipes/demo_latent_scale.py
#   5. decoder fine-tuned against discriminators, encoder frozen (the latent space stays), 500 steps
#   6. songs -> shards (latents, phoneme ids, style, REPA targets) training/prepare_data.py (Ray Data)
#   7. DiT, block flow matching + REPA, 3000 steps (constant lr, then a linear decay over the last 1200),
#      2 CPU workers                                               training/block_fm.py (Ray Train)
#   8. VAE fine-tuned 400 steps with a latent onset channel (channel 0 follows the onset envelope)
#   9. songs -> shards again with that encoder (they also carry each song's stated tempo)
#  10. DiT fine-tuned 900 steps on the new latents
#  11. DiT fine-tuned 1500 steps with a tempo clock added (the beat phase of the stated tempo per frame)
#  12. install the exported model directory into dr2studio/assets/demo/
#
# Expected wall time on a 2-core machine: songs ~7 min, VAE ~32 min, decoder GAN ~11 min, prepare ~7 min,
# DiT ~2 h 5 min, onset VAE ~10 min, prepare ~7 min, DiT on the onset latents ~38 min, DiT with the
# clock ~64 min: about 5 h. docs/demo_model.md records the times of the runs that made the shipped files.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python}"
WORK="$(mkdir -p "${DEMO_WORK:-$ROOT/runs/demo}" && cd "${DEMO_WORK:-$ROOT/runs/demo}" && pwd)"
INSTALL="${DEMO_INSTALL:-1}"
SONGS="${DEMO_SONGS:-400}"
VAE_PITCH_STEPS="${DEMO_VAE_PITCH_STEPS:-700}"  # phase 1 of the VAE
VAE_STEPS="${DEMO_VAE_STEPS:-1800}"  # phase 1 + phase 2
DIT_STEPS="${DEMO_DIT_STEPS:-3000}"
DIT_DECAY="${DEMO_DIT_DECAY:-1200}"  # last steps of the DiT with a linearly falling learning rate
GAN_STEPS="${DEMO_GAN_STEPS:-500}"  # decoder-only fine-tune with discriminators
ONSET_STEPS="${DEMO_ONSET_STEPS:-400}"  # encoder + decoder with the latent onset channel
DIT_ONSET_STEPS="${DEMO_DIT_ONSET_STEPS:-900}"  # DiT moved onto the onset latents (last 300 decaying)
DIT_CLOCK_STEPS="${DEMO_DIT_CLOCK_STEPS:-1500}"  # DiT with the tempo clock (last 500 decaying)
# Ray starts its workers at niceness 15; on a shared machine they would starve. Same priority as the rest.
export RAY_worker_niceness="${RAY_worker_niceness:-0}"
cd "$ROOT"

stamp() { date +%s; }
TIMES="$WORK/times.txt"
: >>"$TIMES"
mark() { echo "$1 $2" >>"$TIMES"; echo "== $1: $2 s" >&2; }

# vae_finetune CONFIG NAME EXPORT STEPS FROM MARK: a VAE run starting from $WORK/FROM's encoder and decoder
vae_finetune() {
  [ -f "$WORK/$3/decoder.safetensors" ] && return 0
  local t; t=$(stamp)
  "$PY" -m training.vae --config "training/configs/$1.json" --name "$2" \
      --storage-path "$WORK" --export-dir "$WORK/$3" --max-steps "$4" \
      --set manifest="$WORK/songs/manifest.jsonl" \
      --set encoder_from="$WORK/$5" --set decoder_from="$WORK/$5"
  mark "$6" $(( $(stamp) - t ))
}

# prepare_shards OUT VAE_DIR MARK: songs -> $WORK/OUT (latents of $WORK/VAE_DIR's encoder, phoneme ids,
# style vectors, stated tempos, REPA targets), unless it is there already
prepare_shards() {
  [ -f "$WORK/$1/index.json" ] && return 0
  local t; t=$(stamp)
  "$PY" -m training.prepare_data --manifest "$WORK/songs/manifest.jsonl" --output "$WORK/$1" \
      --set max_seconds=30 --set shard_size=100 \
      --set encoder_kwargs="{\"model_dir\": \"$WORK/$2\", \"device\": \"cpu\"}" \
      --set tokenizer_kwargs="{\"vocab\": \"$WORK/$2\"}" \
      --set style_kwargs="{\"model_dir\": \"$WORK/$2\"}" \
      --set 'ssl=[{"name": "spectral", "cls": "training.recipes.demo_features:SpectralFeatures", "kwargs": {"onset_points": 4}}]'
  mark "$3" $(( $(stamp) - t ))
}

if [ ! -f "$WORK/songs/manifest.jsonl" ]; then
  t=$(stamp)
  "$PY" -m training.synth_songs --out "$WORK/songs" --count "$SONGS" --seed 0 \
      --min-seconds 10 --max-seconds 30 --sample-rate 16000
  mark songs $(( $(stamp) - t ))
fi

"$PY" training/recipes/demo_assets.py --out "$WORK/assets"

if [ ! -f "$WORK/vae-export/decoder.safetensors" ]; then
  t=$(stamp)
  # phase 1: mel + long-window STFT (up to 256 ms, 3.9 Hz bins) + frame-locked loss: pitch first
  "$PY" -m training.vae --config training/configs/demo_vae.json --name demo-vae \
      --storage-path "$WORK" --max-steps "$VAE_PITCH_STEPS" \
      --set manifest="$WORK/songs/manifest.jsonl"
  # phase 2: the same run resumed with 16 and 32 ms STFT windows added: onsets (drums) and tempo
  # (--resume: the losses differ from phase 1's, which the run-name guard otherwise refuses)
  "$PY" -m training.vae --config training/configs/demo_vae_onsets.json --name demo-vae --resume \
      --storage-path "$WORK" --export-dir "$WORK/vae-export" --max-steps "$VAE_STEPS" \
      --set manifest="$WORK/songs/manifest.jsonl"
  "$PY" training/recipes/demo_latent_scale.py --model-dir "$WORK/vae-export" \
      --manifest "$WORK/songs/manifest.jsonl" --count 40
  mark vae $(( $(stamp) - t ))
fi

# phase 3: the decoder alone, now with the discriminators (the encoder is frozen, so latents and the
# DiT trained on them stay valid): a cleaner noise floor between notes, so beats read again
vae_finetune demo_vae_decoder_gan demo-vae-gan vae-gan-export "$GAN_STEPS" vae-export decoder_gan
# the finished VAE folder also holds the phoneme table and style encoder: data prep and export read them here
cp "$WORK/assets/vocab.json" "$WORK/assets/style_encoder.json" "$WORK/assets/style_encoder.safetensors" "$WORK/vae-gan-export/"

prepare_shards shards vae-gan-export prepare

if [ ! -f "$WORK/export/model.safetensors" ]; then
  t=$(stamp)
  "$PY" -m training.block_fm --config training/configs/demo_block_fm.json --name demo-block_fm \
      --storage-path "$WORK" --export-dir "$WORK/export" --max-steps "$DIT_STEPS" --set decay_steps="$DIT_DECAY" \
      --set data="$WORK/shards" --set assets_dir="$WORK/vae-gan-export"
  mark block_fm $(( $(stamp) - t ))
fi

# the encoder learns to put the onset envelope on latent channel 0, so the beat is there for the DiT
vae_finetune demo_vae_onset demo-vae-onset vae-onset-export "$ONSET_STEPS" vae-gan-export vae_onset
cp "$WORK/assets/vocab.json" "$WORK/assets/style_encoder.json" "$WORK/assets/style_encoder.safetensors" "$WORK/vae-onset-export/"

prepare_shards shards_onset vae-onset-export prepare_onset

if [ ! -f "$WORK/export_onset/model.safetensors" ]; then
  t=$(stamp)
  "$PY" -m training.block_fm --config training/configs/demo_block_fm.json --name demo-block_fm-onset \
      --storage-path "$WORK" --export-dir "$WORK/export_onset" --max-steps "$DIT_ONSET_STEPS" \
      --set init_from="$WORK/export" --set lr=0.0005 --set warmup_steps=20 --set decay_steps=300 \
      --set data="$WORK/shards_onset" --set assets_dir="$WORK/vae-onset-export"
  mark block_fm_onset $(( $(stamp) - t ))
fi

if [ ! -f "$WORK/export_clock/model.safetensors" ]; then
  t=$(stamp)
  # a zero-initialised tempo clock added to the DiT: it starts out as the model above
  "$PY" -m training.block_fm --config training/configs/demo_block_fm.json --name demo-block_fm-clock \
      --storage-path "$WORK" --export-dir "$WORK/export_clock" --max-steps "$DIT_CLOCK_STEPS" \
      --set init_from="$WORK/export_onset" --set lr=0.0005 --set warmup_steps=20 --set decay_steps=500 \
      --set 'model={"tempo_clock": [4, 2, 1, 0.5, 0.25]}' \
      --set data="$WORK/shards_onset" --set assets_dir="$WORK/vae-onset-export"
  mark block_fm_clock $(( $(stamp) - t ))
fi

if [ "$INSTALL" = "1" ]; then
  DEST="$ROOT/dr2studio/assets/demo"
  mkdir -p "$DEST"
  for f in model.json model.safetensors decoder.json decoder.safetensors encoder.json encoder.safetensors \
           vocab.json style_encoder.json style_encoder.safetensors dr2studio.json; do
    cp "$WORK/export_clock/$f" "$DEST/.$f.tmp" && mv "$DEST/.$f.tmp" "$DEST/$f"
  done
  "$PY" - "$DEST/dr2studio.json" "$TIMES" <<'EOF'
import json, sys
path, times = sys.argv[1], sys.argv[2]
data = json.load(open(path, encoding="utf-8"))
data["recipe"] = "training/recipes/demo_model.sh"
data["wall_seconds"] = {k: int(v) for k, v in (line.split() for line in open(times) if line.strip())}
data["description"] = ("dr2studio demo model: VAE + DiT trained on CPU by training/vae.py and training/block_fm.py "
                       "on procedurally generated songs (training/synth_songs.py); 8 kHz audio, 40 Hz x 32 latents")
open(path, "w", encoding="utf-8").write(json.dumps(data, indent=2) + "\n")
EOF
  du -sh "$DEST" >&2
fi
echo "demo model: $WORK/export_clock" >&2
