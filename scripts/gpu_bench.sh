#!/usr/bin/env bash
# One call on an H100/H200: every GPU measurement of the project, nothing fetched from the network.
#
#   scripts/gpu_bench.sh [OUT_DIR]        (default OUT_DIR: ${OUT:-gpu_results})
#
# 1. bench-train at GPT-2 small shapes (bf16, eager and compiled) against ../shared/reference
#    (or ./shared/reference) compiled, in the same process: the gate is >= 1.2x, MFU >= 40%;
# 2. the sampler benchmark model (scripts/train_bench_model.sh on the GPU, ~1 min) unless
#    runs/bench exists, then bench-infer at batch 1 and batch 8 (eager, dual cache + threshold,
#    compiled / CUDA graphs);
# 3. the gpu-marked tests.
# Python: $PYTHON, else the project's .venv, else python3 (the GPU image's torch). A package
# missing there can be carried as wheels in ./.whl (installed with --no-index, offline), made
# beforehand on a machine with an index, for the GPU image's Python (3.12), e.g.:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#     pydantic pydantic-core annotated-types typing-inspection datasets dill multiprocess tomli-w
# The reference script is ../shared/reference/ref_bench.py, or shared/reference/ in the checkout.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out="${1:-${OUT:-gpu_results}}"
mkdir -p "$out"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHON  # scripts/train_bench_model.sh runs the trainer with it
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then "$PYTHON" -m pip install -q --no-index --find-links .whl .whl/*.whl >"$out/pip.log" 2>&1; fi
"$PYTHON" - <<'PY' || { echo "missing packages: see above (carry wheels in ./.whl)"; exit 2; }
import importlib.util, sys
missing = [m for m in ("torch", "pydantic", "datasets", "tomli_w", "regex", "safetensors", "numpy", "tqdm", "pytest") if importlib.util.find_spec(m) is None]
print("python", sys.version.split()[0], "missing:", missing or "none")
sys.exit(1 if missing else 0)
PY
reference=../shared/reference/ref_bench.py
[ -f "$reference" ] || reference=shared/reference/ref_bench.py
status=0
run() {  # name, command...: tee the output to $out/name.log and remember a failure
  local name=$1; shift
  echo "=== $name: $*"; "$@" 2>&1 | tee "$out/$name.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "=== $name FAILED"; status=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"

run bench_train "$PYTHON" -m cli.bench_train --config config/resources/bench_train_gpu.toml --set "reference_path=$reference"
if [ ! -d runs/bench/checkpoints ]; then
  run train_bench_model scripts/train_bench_model.sh --set training.device=cuda
fi
run bench_infer_b1 "$PYTHON" -m cli.bench_infer --config config/resources/bench_infer_gpu.toml
run bench_infer_b8 "$PYTHON" -m cli.bench_infer --config config/resources/bench_infer_gpu.toml --set bench_infer.num_prompts=8
# Only the files that hold gpu-marked tests: the others may import client libraries (openai,
# playwright) that the GPU image lacks.
mapfile -t gpu_test_files < <(grep -l "pytest.mark.gpu" tests/test_*.py)
run gpu_tests "$PYTHON" -m pytest -q -m gpu "${gpu_test_files[@]}"
exit $status
