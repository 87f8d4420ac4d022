#!/usr/bin/env bash
# GPU check: VGG-16 on the CIFAR-10 JPEG copy, end to end on one CUDA device in about 10 minutes,
# then the benchmark suite on CUDA. Installs nothing from the internet.
#
# What the GPU machine needs
#   * Python 3.12 with torch (and torchvision) already installed, CUDA working. The project
#     runs on torch >= 2.5 (pyproject.toml), e.g. the image's torch 2.11 / torchvision 0.26.
#   * This repository (the working tree) at any path; the script puts it on PYTHONPATH, so
#     nothing is installed from it.
#   * The data: a folder holding cifar10-jpeg/train.zip and cifar10-jpeg/test.zip (the copy in
#     /work/shared/data on the development machine), named by PYRO_DIRICHLET_DATA (default:
#     ./data under the repository). The JPEGs are decoded once into the cache (~185 MB).
#   * Wheels for what the image lacks, in ./wheels (or WHEELS=DIR). Prepare them on a machine
#     with internet access, for the GPU machine's Python and platform, pinned by
#     constraints.txt (torch and numpy are NOT downloaded: the image's own are used):
#
#       pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#         --no-deps -d wheels \
#         pyro-ppl==1.9.2 pyro-api==0.1.2 opt_einsum==3.4.0 tqdm==4.70.1 \
#         arviz==1.3.0 arviz-base==1.3.1 arviz-stats==1.3.3 arviz-plots==1.3.2 \
#         xarray==2026.9.0 xarray-einstats==0.11.0 pandas==3.1.1 python-dateutil==4.0.0 \
#         six tzdata==2026.6 lazy-loader==0.6 packaging==26.4 scipy==1.18.1 \
#         h5netcdf==1.8.2 h5py==3.16.0 safetensors==0.8.0 \
#         matplotlib==3.11.2 contourpy==1.4.0 cycler==0.12.1 fonttools==4.68.0 \
#         kiwisolver==1.5.1 pillow==13.0.0 pyparsing==3.3.3
#
#     (--platform manylinux2014_x86_64 also matches most of these if pip says a wheel is
#     missing; a package the image already has is simply left as it is.)
#
# Usage
#   bash scripts/gpu_check.sh              # the GPU run (about 10 minutes on an H100)
#   bash scripts/gpu_check.sh --dry-run    # the same steps on the CPU at tiny sizes (minutes)
#
# Environment knobs (defaults in brackets): WHEELS [./wheels], VENV [./.gpu-venv],
# PYRO_DIRICHLET_DATA [./data], OUT [./runs/gpu-check], TRAIN_EPOCHS [15],
# FINETUNE_EPOCHS [3], PYTHON [python3]. Every step's output is under OUT; the last lines
# printed are the timings and accuracies.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,40p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $arg (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done

WHEELS="${WHEELS:-$REPO/wheels}"
VENV="${VENV:-$REPO/.gpu-venv}"
OUT="${OUT:-$REPO/runs/gpu-check}"
PYTHON="${PYTHON:-python3}"
export PYRO_DIRICHLET_DATA="${PYRO_DIRICHLET_DATA:-$REPO/data}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Keep the baseline cache and the decoded-data cache inside OUT: a fresh machine starts empty.
export PYRO_DIRICHLET_CACHE="$OUT/cache/baselines"
if [[ "$DRY_RUN" == 1 ]]; then
    DEVICE=cpu
    TRAIN_EPOCHS="${TRAIN_EPOCHS:-1}"
    FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-1}"
    RUN_SIZE=(--subset 256 --latency-batch 8)
    SUITE=(--quick --repeats 1)
else
    DEVICE=cuda
    TRAIN_EPOCHS="${TRAIN_EPOCHS:-15}"
    FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-3}"
    RUN_SIZE=()
    # --threads 0: torch's own thread count for the CPU side (data indexing); batch 128 throughout.
    SUITE=(--repeats 3 --threads 0 --vgg-train-size 10000)
fi
mkdir -p "$OUT"
cd "$REPO"

step() { printf '\n== %s ==\n' "$*"; }
seconds_since() { echo $(( $(date +%s) - $1 )); }
START=$(date +%s)

step "1/5 torch and the device"
"$PYTHON" - "$DEVICE" <<'PY'
import sys, torch
device = sys.argv[1]
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("CUDA is not available: this script needs a GPU (or --dry-run)")
    print("device:", torch.cuda.get_device_name(0))
PY

step "2/5 pyro-ppl and arviz from the wheels folder (no network)"
if "$PYTHON" -c "import pyro, arviz, h5netcdf, safetensors" 2>/dev/null; then
    echo "already importable with $PYTHON; nothing to install"
else
    [[ -d "$WHEELS" ]] || { echo "no wheels folder at $WHEELS: prepare it as the header of this script says" >&2; exit 1; }
    # --system-site-packages: the venv sees the image's torch, so only the missing packages install.
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install --no-index --find-links "$WHEELS" --disable-pip-version-check --quiet \
        pyro-ppl arviz h5netcdf safetensors tqdm matplotlib
    PYTHON="$VENV/bin/python"
fi
"$PYTHON" -c "import torch, pyro, arviz; print(f'torch {torch.__version__}, pyro {pyro.__version__}, arviz {arviz.__version__}')"
[[ -f "$PYRO_DIRICHLET_DATA/cifar10-jpeg/train.zip" ]] || {
    echo "CIFAR-10 JPEG copy not found: $PYRO_DIRICHLET_DATA/cifar10-jpeg/train.zip (set PYRO_DIRICHLET_DATA)" >&2; exit 1; }

step "3/5 VGG-16: baseline ($TRAIN_EPOCHS epochs), one SVI epoch, prune, fine-tune ($FINETUNE_EPOCHS epochs) on $DEVICE"
RUN_START=$(date +%s)
rm -rf "$OUT/vgg16"
"$PYTHON" -m pyro_dirichlet.app.cli run --model vgg16 --device "$DEVICE" --out "$OUT/vgg16" \
    --cache-dir "$PYRO_DIRICHLET_CACHE" --train-epochs "$TRAIN_EPOCHS" --finetune-epochs "$FINETUNE_EPOCHS" \
    ${RUN_SIZE[@]+"${RUN_SIZE[@]}"} 2>&1 | tee "$OUT/vgg16.log"
echo "pipeline wall time: $(seconds_since "$RUN_START") s"

step "4/5 benchmark suite on $DEVICE"
SUITE_START=$(date +%s)
"$PYTHON" -m benchmarks --device "$DEVICE" "${SUITE[@]}" --json "$OUT/benchmarks.json" 2>&1 \
    | grep -v '^{' | tee "$OUT/benchmarks.txt" || true  # bars not met still leave the JSON
echo "suite wall time: $(seconds_since "$SUITE_START") s"

step "5/5 summary"
"$PYTHON" - "$OUT/vgg16/report.json" "$OUT/benchmarks.json" <<'PY'
import json, sys
from pathlib import Path

report_path, suite_path = map(Path, sys.argv[1:])
if report_path.is_file():
    report = json.loads(report_path.read_text())
    baseline, svi, pruned = report.get("baseline", {}), report.get("svi", {}), report.get("pruned", {})
    latency = report.get("latency", {})
    rows = [
        ("baseline test accuracy", baseline.get("test_accuracy")),
        ("baseline seconds / epoch", baseline.get("seconds_per_epoch")),
        ("SVI seconds (1 epoch)", svi.get("seconds")),
        ("pruned test accuracy before fine-tuning", pruned.get("test_accuracy_before_finetune")),
        ("pruned test accuracy", pruned.get("test_accuracy")),
        ("parameter fraction kept", pruned.get("params_fraction")),
        ("FLOP fraction kept", pruned.get("flops_fraction")),
        ("inference speedup", latency.get("speedup")),
        ("pipeline total seconds", report.get("total_seconds")),
    ]
    for label, value in rows:
        print(f"{label:42s} {value if value is None else round(value, 4)}")
else:
    print(f"no report at {report_path}: see the log above")
if suite_path.is_file():
    suite = json.loads(suite_path.read_text())
    for figure, value in suite.get("figures", {}).items():
        met = suite.get("bars_met", {}).get(figure)
        print(f"{figure:42s} {value:.4f}{'' if met is None else ('  ok' if met else '  NOT MET')}")
PY
echo "total wall time: $(seconds_since "$START") s"
