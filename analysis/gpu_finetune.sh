#!/usr/bin/env bash
# Issue 15's fine-tune bars on a lent GPU machine, in one call: the ResNet-20 / CIFAR-10
# comparison of the gain row and L1-norm (its strongest competitor after calibration) at 50%
# and 30% of the FLOPs, 3 seeds, with a fine-tune learning rate chosen on the validation split.
#
#   1. seed 0 at 50% of the FLOPs once per candidate learning rate, distillation share and
#      label smoothing (LRS, DISTILS, SMOOTHINGS, EPOCHS, BATCH; a share of 0 fine-tunes on the
#      labels alone);
#      analysis.finetune_recipe keeps the best mean validation accuracy -> OUT/recipe.json;
#   2. every other (seed, budget) with the chosen recipe, one after another, most needed first:
#      a part stopped by BUDGET keeps its finished rows (comparison.partial.json);
#   3. analysis.merge_comparisons joins the chosen candidate and the parts -> OUT/comparison.json, .md
#
# One process at a time: four processes sharing the H200 (time-sliced, no MPS) fine-tuned
# slower together than one after another (not one 30-epoch fine-tune of four finished in 150 s,
# against about 1 s an epoch alone).
#
#   OUT=DIR bash analysis/gpu_finetune.sh
#   SMOKE=1 DEVICE=cpu OUT=/tmp/out bash analysis/gpu_finetune.sh    # the same steps, CPU-sized
set -uo pipefail
OUT=${OUT:?set OUT to the folder that receives the results}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-570}  # seconds for everything, so the call ends inside its 600 s
WEIGHTS=${WEIGHTS:-analysis/baselines/resnet20-cifar10.safetensors}
EPOCHS=${EPOCHS:-20}
BATCH=${BATCH:-512}
started=$SECONDS
mkdir -p "$OUT/parts"
source analysis/gpu_setup.sh
left() { echo $((BUDGET - (SECONDS - started) - 15)); }  # 15 s kept for the merge
if [ -n "${SMOKE:-}" ]; then
  size=(--fit-images 256 --validation-images 128 --test-images 128)
else
  size=()
fi

part() {  # NAME SEED SHARE LR DISTIL SMOOTHING: one comparison part
  local folder="$OUT/parts/$1"
  mkdir -p "$folder"
  if [ "$(left)" -le 0 ]; then echo "no time left for $1"; return 1; fi
  timeout "$(left)" python3 -m analysis.resnet20_cifar10 --device "$DEVICE" --weights "$WEIGHTS" --out "$folder" \
    --seed "$2" --flop-budgets "$3" --keep-ratios "" --criterion "dirichlet mean + gain + fold" --criterion l1-norm \
    --finetune-only all --finetune-epochs "$EPOCHS" --finetune-lr "$4" --finetune-batch-size "$BATCH" --finetune-distillation "$5" \
    --finetune-label-smoothing "$6" "${size[@]}" \
    > "$folder/log" 2>&1
  grep -h ": fine-tuned\|rror:" "$folder/log"
  echo "$1 ended at $((SECONDS - started)) s"
}

{
gpu_setup || exit 1
echo "set up at $((SECONDS - started)) s"
for lr in ${LRS:-0.05 0.2}; do
  for distil in ${DISTILS:-0}; do
    for smoothing in ${SMOOTHINGS:-0}; do part "probe-lr$lr-distil$distil-smoothing$smoothing" 0 0.5 "$lr" "$distil" "$smoothing"; done
  done
done
python3 -m analysis.finetune_recipe --json "$OUT/recipe.json" "$OUT"/parts/probe-*/comparison*.json || exit 1
chosen=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['chosen']['source'])" "$OUT/recipe.json")
read -r lr distil smoothing < <(python3 -c "import json, sys; c = json.load(open(sys.argv[1]))['chosen']; print(c['finetune_lr'], c['finetune_distillation'], c['finetune_label_smoothing'])" "$OUT/recipe.json")
for job in "1 0.5" "2 0.5" "0 0.3" "1 0.3" "2 0.3"; do
  set -- $job
  part "seed$1-flops$2" "$1" "$2" "$lr" "$distil" "$smoothing"
done
python3 -m analysis.merge_comparisons --out "$OUT" "$chosen" "$OUT"/parts/seed*/comparison*.json
echo "ended at $((SECONDS - started)) s"
} 2>&1 | tee "$OUT/log"
