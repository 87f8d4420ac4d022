#!/usr/bin/env bash
# Issue 29 on a lent GPU machine, in one call (prepared; NOT RUN YET: no GPU was lent to the
# session that wrote it). Trains the paper's CIFAR-10 networks (JPEG copy), then:
#   1. ResNet-56 and VGG-16 baselines (analysis.train_baseline, one-cycle, batch 512,
#      channels-last), weights and metadata (recipe, SHA-256) in $OUT and in
#      analysis/baselines/ of this checkout, where the benchmark finds ResNet-56;
#   2. the head to head with Torch-Pruning (benchmarks.versus_torch_pruning) on ResNet-56,
#      ResNet-20, MobileNetV2 (trained by the benchmark, --train-epochs) and the small BN
#      ResNet: 50% and 30% FLOPs, 3 seeds, one fine-tune recipe for every row;
#   3. the paper table: `pyro-dirichlet run` on VGG-16 and ResNet-56 at the model's default
#      target (VGG-16: the Dirichlet paper's reported widths) and at 50% / 30% FLOPs.
# Everything lands in $OUT:
#   {resnet56,vgg16}-cifar10.safetensors / .json   baselines
#   versus_torch_pruning.json, versus.log            the head to head
#   paper-<model>-<target>/                          run directories (report.json has the figures)
#   log                                              this script's output
#
# Budget, estimated for one H100 (not measured): ResNet-56 40 epochs at ~3 s, VGG-16 30 epochs
# at ~3 s, the benchmark ~4 min, the paper runs ~1 min: under the 600 s of one call. Each step
# is cut by `timeout` so that the later ones still run and whatever finished is kept.
#
#   SMOKE=1 DEVICE=cpu OUT=/tmp/out bash analysis/gpu_paper_networks.sh   # the same steps, CPU-sized
set -uo pipefail
OUT=${OUT:?set OUT to the folder that receives the results}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-570}
started=$SECONDS
mkdir -p "$OUT"
source analysis/gpu_setup.sh
left() { echo $((BUDGET - (SECONDS - started))); }
{
gpu_setup || exit 1

if [ -n "${SMOKE:-}" ]; then
  train56=(--epochs 1 --subset 1000 --eval-subset 500); train16=(--epochs 1 --subset 1000 --eval-subset 500)
  versus=(--seeds 0 --budgets 0.5 --finetune-epochs 1 --train-images 1000 --train-epochs 1 --networks small-resnet resnet20)
  paper=(--finetune-epochs 1 --subset 1000)
else
  train56=(--epochs 40); train16=(--epochs 30)
  versus=(--seeds 0 1 2 --finetune-epochs 10 --train-epochs 30)
  paper=(--finetune-epochs 10)
fi

for model in resnet56 vgg16; do
  if [ "$model" = resnet56 ]; then size=("${train56[@]}"); share=4; else size=("${train16[@]}"); share=3; fi
  timeout $(( $(left) * 10 / (share * 10 + 30) + 60 )) python3 -m analysis.train_baseline --model "$model" --dataset cifar10 \
    --device "$DEVICE" --batch-size 512 --lr 0.4 --channels-last --no-progress --cache-dir /tmp/pd-baselines \
    "${size[@]}" --json "$OUT/$model-cifar10.json" > "/tmp/train-$model.out"
  echo "$model baseline: status $? at $((SECONDS - started)) s"; tail -c 1500 "/tmp/train-$model.out"
  weights=$(ls /tmp/pd-baselines/$model-cifar10-*.safetensors 2>/dev/null | grep -v resume | head -1)
  if [ -n "$weights" ]; then
    cp "$weights" "$OUT/$model-cifar10.safetensors"
    cp "$weights" "analysis/baselines/$model-cifar10.safetensors"
    sha256sum "$OUT/$model-cifar10.safetensors"
  fi
done

timeout $(( $(left) - 90 )) python3 -m benchmarks.versus_torch_pruning "${versus[@]}" \
  --out "$OUT/versus_torch_pruning.json" > "$OUT/versus.log" 2>&1
echo "head to head: status $? at $((SECONDS - started)) s"; tail -n 40 "$OUT/versus.log"

for model in vgg16 resnet56; do
  [ -f "$OUT/$model-cifar10.safetensors" ] || continue
  for target in default "--budget 0.5" "--budget 0.3"; do
    name=paper-$model-$(echo "$target" | tr -d ' -')
    [ "$target" = default ] && target=""
    timeout $(( $(left) / 4 )) python3 -m pyro_dirichlet run --model "$model" --dataset cifar10 --device "$DEVICE" \
      --weights "$OUT/$model-cifar10.safetensors" --out "$OUT/$name" $target "${paper[@]}" --quiet
    echo "$name: status $? at $((SECONDS - started)) s"
  done
done
} 2>&1 | tee "$OUT/log"
