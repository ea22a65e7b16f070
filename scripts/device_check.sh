#!/usr/bin/env bash
# The one prepared device check (at most 8 minutes on one GPU at the paper profile's model sizes):
#   1. a procedural HumanML3D-format dataset (a GPU machine may have no network and no HumanML3D copy),
#   2. a paper-sized MDM backbone and a paper-sized reward, each trained briefly on it,
#   3. `easytune bench paper`: peak memory vs T in {10, 20, 50} for EasyTune (all steps and the last 10),
#      EasyTune-chain, DRaFT-50, AlignProp and DRTune; trajectory and plain training-step times; a short
#      EasyTune vs DRaFT-50 reward curve -- one JSON naming the device (results/gpu/device_check.json).
#
# Usage:   scripts/device_check.sh                      # paper profile, cuda if available
#          PROFILE=smoke scripts/device_check.sh        # seconds on a CPU (what CI runs)
# Settings (environment): PROFILE (paper), DEVICE (auto), OUT, WORK (a temporary directory, removed at the end
# unless given), STEPS (10,20,50 at paper), BATCH (8 at paper), LENGTH (196 at paper), CURVE_SECONDS (60 at paper),
# PYTHON (python); DATA, BASE and REWARD together name existing runs to check instead of building them.
set -euo pipefail

PROFILE=${PROFILE:-paper}
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python}
case "$PROFILE" in
  paper) MOTIONS=${MOTIONS:-600}; PRETRAIN_STEPS=${PRETRAIN_STEPS:-300}; CURVE_SECONDS=${CURVE_SECONDS:-60}
         STEPS=${STEPS:-10,20,50}; BATCH=${BATCH:-8}; LENGTH=${LENGTH:-196}
         OUT=${OUT:-results/gpu/device_check.json} ;;
  quick) MOTIONS=${MOTIONS:-300}; PRETRAIN_STEPS=${PRETRAIN_STEPS:-100}; CURVE_SECONDS=${CURVE_SECONDS:-20}
         STEPS=${STEPS:-10,20,50}; BATCH=${BATCH:-4}; LENGTH=${LENGTH:-120}
         OUT=${OUT:-device_check_quick.json} ;;
  smoke) MOTIONS=${MOTIONS:-240}; PRETRAIN_STEPS=${PRETRAIN_STEPS:-3}; CURVE_SECONDS=${CURVE_SECONDS:-0.5}
         STEPS=${STEPS:-2,4}; BATCH=${BATCH:-2}; LENGTH=${LENGTH:-40}
         OUT=${OUT:-device_check_smoke.json} ;;
  *) echo "device_check.sh: error: PROFILE: unknown profile '$PROFILE' (choose paper, quick or smoke)" >&2; exit 2 ;;
esac

if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
easytune() { "$PYTHON" -m easytune_lab.cli "$@"; }
start=$(date +%s)
say() { echo "[device_check $(( $(date +%s) - start )) s] $*"; }

say "profile $PROFILE, device $DEVICE, work $WORK"
if [ -n "${DATA:-}" ] && [ -n "${BASE:-}" ] && [ -n "${REWARD:-}" ]; then
  say "checking the given runs: data $DATA, backbone $BASE, reward $REWARD"
else
  DATA=$WORK/data BASE=$WORK/mdm REWARD=$WORK/reward
  easytune data synth --out "$DATA" --num-motions "$MOTIONS" --seed 0 --no-progress
  say "data ready"
  easytune pretrain --backbone mdm --data "$DATA" --profile "$PROFILE" --iterations "$PRETRAIN_STEPS" \
    --out "$BASE" --device "$DEVICE" --no-progress
  say "backbone ready"
  easytune reward train --data "$DATA" --profile "$PROFILE" --epochs 1 --out "$REWARD" --device "$DEVICE"
  say "reward ready"
fi
easytune bench paper --base "$BASE" --reward "$REWARD" --data "$DATA" --profile "$PROFILE" \
  --device "$DEVICE" --sample-steps "$STEPS" --batch-size "$BATCH" --length "$LENGTH" --curve-seconds "$CURVE_SECONDS" \
  --out "$OUT" ${NO_PROGRESS:+--no-progress}
say "done -> $OUT"
