#!/usr/bin/env bash
# Train a sampler benchmark model, so that its confidences mean something and threshold decoding
# is measured where it matters:
#   scripts/train_bench_model.sh        -> runs/bench: the quick-start model trained 1.7x longer
#                                          (1,000 steps), for gen 256 (config/resources/bench_infer.toml)
#   scripts/train_bench_model.sh long   -> runs/bench_long: the same model at context 1,056, batch 2,
#                                          for gen 1,024 (config/resources/bench_infer_long.toml)
# ~5 minutes each on 2 idle CPU cores; 1 thread is faster when other jobs share the cores
# (OMP_NUM_THREADS=1 scripts/train_bench_model.sh). Further arguments go to the trainer
# (e.g. --set training.device=\"cuda\"). With $PYTHON set it runs `$PYTHON -m cli.train` (the GPU
# script does), else `uv run diffusionlm-train`. Then: uv run diffusionlm-bench-infer
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then train=("$PYTHON" -m cli.train); else train=(uv run diffusionlm-train); fi
shape=(--set logging.run_name=bench)
if [ "${1:-}" = long ]; then
  shift
  shape=(--set logging.run_name=bench_long --set model.context_length=1056 --set training.batch_size=2)
fi
exec "${train[@]}" \
  "${shape[@]}" \
  --set training.max_train_iteration=1000 \
  --set optimizer.cosine_cycle_iters=1000 \
  --set training.ckpting_save_iter=500 \
  --set training.val_freq_iteration=250 \
  "$@"
