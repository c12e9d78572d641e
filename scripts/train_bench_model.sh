#!/usr/bin/env bash
# Train the sampler benchmark's model (runs/bench): the quick-start model trained 1.7x longer
# (1,000 steps), so that its confidences mean something and threshold decoding is measured
# where it matters. ~5 minutes on 2 idle CPU cores; 1 thread is faster when other jobs share
# the cores (OMP_NUM_THREADS=1 scripts/train_bench_model.sh). Extra arguments go to the
# trainer (e.g. --set training.device=\"cuda\"). With $PYTHON set it runs `$PYTHON -m cli.train`
# (the GPU script does), else `uv run diffusionlm-train`. Then: uv run diffusionlm-bench-infer
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then train=("$PYTHON" -m cli.train); else train=(uv run diffusionlm-train); fi
exec "${train[@]}" \
  --set logging.run_name=bench \
  --set training.max_train_iteration=1000 \
  --set optimizer.cosine_cycle_iters=1000 \
  --set training.ckpting_save_iter=500 \
  --set training.val_freq_iteration=250 \
  "$@"
