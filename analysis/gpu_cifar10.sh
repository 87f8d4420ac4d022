#!/usr/bin/env bash
# Issue 15 on a lent GPU machine, in one call: train the ResNet-20 / CIFAR-10 (JPEG copy)
# baseline, then run the equal-budget comparison (full protocol: all 45,000 training images,
# 5,000 validation, 10,000 test) on it. Everything lands in $OUT:
#   resnet20-cifar10.safetensors / .json   the trained weights and their metadata
#   cmp/comparison.json, cmp/comparison.md  the comparison (cmp/comparison.partial.json while it runs)
#   log                                     this script's output
#
# The data and the Pyro/ArviZ wheels travel as analysis/gpu_setup.sh says.
#
#   SMOKE=1 DEVICE=cpu OUT=/tmp/out bash analysis/gpu_cifar10.sh    # the same steps, CPU-sized
set -uo pipefail
OUT=${OUT:?set OUT to the folder that receives the results}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-570}  # seconds for everything, so the call ends inside its 600 s
started=$SECONDS
mkdir -p "$OUT/cmp"
source analysis/gpu_setup.sh
{
gpu_setup || exit 1

# The baseline: 100 epochs of the registry's one-cycle recipe at batch 512 (88 steps an epoch;
# the peak learning rate scaled from 0.2 at 128 to 0.4, not linearly: one-cycle's warm-up
# already tames the start).
if [ -n "${SMOKE:-}" ]; then train_size=(--epochs 1 --subset 1000 --eval-subset 500); else train_size=(--epochs 100); fi
timeout $((BUDGET * 2 / 5)) python3 -m analysis.train_baseline --model resnet20 --dataset cifar10 --device "$DEVICE" \
  --batch-size 512 --lr 0.4 --channels-last --no-progress --cache-dir /tmp/pd-baselines "${train_size[@]}" \
  --json "$OUT/resnet20-cifar10.json" > /tmp/train.out
status=$?
tail -c 3000 /tmp/train.out
weights=$(ls /tmp/pd-baselines/resnet20-cifar10-*.safetensors 2>/dev/null | grep -v resume | head -1)
if [ $status -eq 0 ] && [ -n "$weights" ]; then
  cp "$weights" "$OUT/resnet20-cifar10.safetensors"
else
  echo "training stopped (status $status) after $((SECONDS - started)) s; comparing on the committed baseline instead"
  cp /tmp/pd-baselines/*.resume.pt "$OUT/" 2>/dev/null
  weights=analysis/baselines/resnet20-cifar10.safetensors
fi
echo "baseline done at $((SECONDS - started)) s"

if [ -n "${SMOKE:-}" ]; then
  compare_size=(--seeds 1 --fit-images 500 --validation-images 200 --test-images 200 --finetune-epochs 1)
else
  compare_size=()
fi
timeout $((BUDGET - (SECONDS - started))) python3 -m analysis.resnet20_cifar10 --device "$DEVICE" --weights "$weights" \
  --out "$OUT/cmp" --finetune-only "50% FLOPs:3" "${compare_size[@]}" | grep -v "^|"
echo "comparison ended (status ${PIPESTATUS[0]}) at $((SECONDS - started)) s"
} 2>&1 | tee "$OUT/log"
