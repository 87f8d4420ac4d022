# Sourced by analysis/gpu_*.sh: make a bare GPU machine ready for the project, in the repository root.
# Pyro and ArviZ travel as wheels in .whl/ (see /work/.library/device/README.md; the image has
# torch but not them) and the project runs from the checkout. CIFAR-10 travels xz-compressed
# (.gpudata/{train,test}.zip.xz: the JPEG zips store every file's identical Huffman and
# quantisation tables, so xz takes 62 MB to 19 MB) and is checked against the SHA-256 sums in
# ../shared/data/README.md after unpacking. Make them here with
#   xz -9e -T2 -c ../shared/data/cifar10-jpeg/train.zip > .gpudata/train.zip.xz   (and test)
export PYTHONUNBUFFERED=1 PYRO_DIRICHLET_CACHE=${PYRO_DIRICHLET_CACHE:-/tmp/pd-cache}
export PYRO_DIRICHLET_DATA=${PYRO_DIRICHLET_DATA:-/tmp/pd-data}

gpu_setup() {
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
    export PYTHONPATH=/tmp/site:.
  else
    export PYTHONPATH=.
  fi
  python3 -c "import torch, pyro, arviz; print('torch', torch.__version__, 'pyro', pyro.__version__, 'arviz', arviz.__version__, 'cuda', torch.cuda.is_available())" || return 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  local folder="$PYRO_DIRICHLET_DATA/cifar10-jpeg"
  if [ ! -f "$folder/test.zip" ]; then
    mkdir -p "$folder"
    for split in train test; do xz -dc ".gpudata/$split.zip.xz" > "$folder/$split.zip" || return 1; done
    (cd "$folder" && sha256sum -c <<'SUMS'
f0d92cb73726f256a7679d91a48ed270463cdaa30e407b3a6290fc190085f3e5  train.zip
42dfb3d79fdf69453f3d317ce18d8da8e68a1100443aa1626db87202d63c1662  test.zip
SUMS
    ) || return 1
  fi
}
