#!/usr/bin/env bash
# The accelerator checks of one short GPU session, in order of what they decide, each bounded in
# time so that a slow one cannot eat the window (one H200: about 8 minutes in all).
#
#   bash scripts/gpu_check.sh [OUT_DIR]
#
# On a machine whose image lacks the project's pure-Python dependencies (tensorflow-datasets,
# grain, array-record, ml-collections, clu, tensorboardX, av, ...), put their wheels in .whl/ first
# (pip download ... -d .whl); they are installed into /tmp/site and put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
if [ -d .whl ] && ! python -c 'import grain, tensorflow_datasets, ml_collections' 2>/dev/null; then
  pip install -q --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch and a second JAX process share the GPU
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c 'import jax; print(jax.__version__, jax.devices())' | tee -a "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run, keep the output, never stop the script
  local name=$1 limit=$2; shift 2
  echo "=== $name" | tee -a "$OUT/summary.txt"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.txt"
  echo "--- $name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

# 1. cuDNN flash attention forward + backward at every zoo length vs einsum (bf16 tolerance).
step attention 120 python scripts/gpu_attention_check.py
# 2. The tube tokenizer: slices + matmul against the convolution it replaced, forward + backward.
step tokenizer 90 python scripts/bench_tokenizer.py
# 3. Every Kinetics-400 paper config's train step (auto attention, bf16, batch 8 halved to fit)
#    and the HF PyTorch twins (eager and torch.compile) in the same run.
step zoo 330 python -m sparse_tubes bench zoo --json --with_torch --batch_size=8 --steps=5 \
    --warmup=2 --dtype=bfloat16 --remat=none --scan_layers=false
# 4. Does the host's decode + augment keep one paper config fed? (moving_shapes/video_paper)
step with_data 150 python -m sparse_tubes bench step --json --with_data --steps=10 --warmup=3 \
    --config=configs/synthetic/paper_res.py:vivit_b16x2_m1 --batch_size=8 --dtype=bfloat16 \
    --config.grain.worker_count=16
cat "$OUT/summary.txt"
