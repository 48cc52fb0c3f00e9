#!/usr/bin/env bash
# The GPU checks of the decoding and update paths, as one prepared script (about 10 minutes on one H100/H200).
#
#   bench/gpu_check.sh prepare    # on a machine with the package registry, before the GPU slot: the wheels the GPU
#                                 # image lacks (TRL 1.12 and its datasets) and the model's config + tokenizer go
#                                 # into .gpu-carry/ (git-ignored; take that folder along to the GPU machine)
#   bench/gpu_check.sh            # on the GPU machine: tests, then bench
#   bench/gpu_check.sh tests      # equality tests on CUDA: the static-cache decode as a CUDA graph against the eager
#                                 # loop (tokens, logits, seeds, stop strings, bf16 autocast), chunked log-probs,
#                                 # the PPO / generation / reward-model tests; what micro_batch_size: auto picks
#   bench/gpu_check.sh bench      # gpu_roofline decoding with the static cache off (before) and on (after, with the
#                                 # update MFU), then PPO vs TRL 1.12 at the benchmark configuration (batch 16) and
#                                 # at a GPU-sized one (batch 128); JSON into bench/results/
#   bench/gpu_check.sh tiny       # PPO vs TRL 1.12, quick mode (tiny model)
#   bench/gpu_check.sh full       # the earlier full part: PPO vs TRL at batch 16 + the roofline (static cache auto)
#
# Environment: PYTHON (default python3), TRL_PYTHON (an interpreter with TRL 1.12; default: PYTHON when it imports
# trl, else the bench's own environment, created on first use), MODEL (default: .gpu-carry/model when present,
# else smollm2-135m-instruct), RANDOM_INIT=1 (the model's architecture with random weights, when the weights are
# not at hand: throughput only; the default with .gpu-carry/model, which holds no weights), LOG (a folder for
# logs), STEPS (PPO steps per run at batch 16), BIG (the GPU-sized batch, default 128), RESULTS_TO (a folder that
# gets, at the end, the JSON files this run wrote, docs/benchmarks.md with its updated rows, and the logs as one
# gpu-logs.tgz: at most 8 files, for machines that hand back only a few).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CARRY=.gpu-carry
LOG=${LOG:-bench/results/gpu-logs}
mkdir -p "$LOG"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -d "$CARRY/model" ]; then
  MODEL=${MODEL:-$CARRY/model}
  RANDOM_INIT=${RANDOM_INIT:-1}
fi
MODEL=${MODEL:-smollm2-135m-instruct}
status=0

# The packages the GPU image lacks, pinned; everything else (torch, transformers, peft, accelerate, pandas,
# pyarrow) is the image's own.
WHEELS=(trl==1.12.0 datasets==4.7.0 dill==0.4.0 multiprocess==0.70.18)

part_prepare() {
  local py=${PYTHON:-python3}
  [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python  # the project's environment
  rm -rf "$CARRY" && mkdir -p "$CARRY/whl" "$CARRY/model" || return 1
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$CARRY/whl" "${WHEELS[@]}" || return 1
  "$py" - "$CARRY/model" <<'EOF' || return 1
import shutil, sys
from pathlib import Path
from components.models.base_model import resolve_model_dir
src, dst = resolve_model_dir("smollm2-135m-instruct"), Path(sys.argv[1])
for f in src.iterdir():
    if f.is_file() and f.suffix != ".safetensors" and not f.name.endswith(".bin"):
        shutil.copy2(f, dst / f.name)
print(f"{dst}: config and tokenizer of {src.name} (no weights: the GPU runs use random-init weights)")
EOF
  du -sh "$CARRY"
}

setup_gpu_env() {
  if [ -d "$CARRY/whl" ] && ! "$PY" -c "import trl" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site \
      "$CARRY"/whl/*.whl || return 1
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  anchor=()
  if [ -n "${TRL_PYTHON:-}" ]; then
    anchor=(--anchor-python "$TRL_PYTHON")
  elif "$PY" -c "import trl" 2>/dev/null; then
    anchor=(--anchor-python "$(command -v "$PY")")
  fi
}

part_tests() {
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())" || return 1
  # accelerator_device() picks the GPU when one is visible, so these run the CUDA path.
  local k=()
  "$PY" -c "import dvc" 2>/dev/null || k=(-k "not dvc")  # a GPU box with the learning stack only
  "$PY" -m pytest -q -p no:cacheprovider -o addopts="" "${k[@]}" --durations=10 \
    tests/unit/test_static_decode.py tests/unit/test_batch_sizing.py \
    tests/unit/test_ppo_core.py tests/unit/test_generation_rows.py tests/unit/test_precision.py \
    tests/integration/test_ppo_tiny.py tests/integration/test_reward_tiny.py \
    tests/integration/test_reward_frozen_cache.py 2>&1 | tee "$LOG/tests.log"
  local rc=${PIPESTATUS[0]}
  "$PY" - <<'EOF' 2>&1 | tee "$LOG/auto_batch.log"
import torch
from components.models.policy import batch_sizing as bs
free, total = torch.cuda.mem_get_info()
for seq, reply, mini in ((96, 32, 8), (96, 32, 64), (288, 256, 64)):
    per = bs.update_bytes_per_reply(seq, reply, 30, 576, 49152)  # SmolLM2-135M's dimensions
    print(f"micro_batch_size: auto, SmolLM2-135M, {seq} tokens ({reply} reply), minibatch {mini}, "
          f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free: {bs.auto_micro_batch(free, per, mini)}")
EOF
  return "$rc"
}

model_for_bench() {
  bench_model=$MODEL
  cond=()
  if [ "${RANDOM_INIT:-0}" = 1 ]; then
    # MODEL is a folder with the config and tokenizer; both trainers get the same random weights.
    bench_model=${TMPDIR:-/tmp}/gpu-check-random-init-model
    "$PY" - "$MODEL" "$bench_model" <<'EOF' || return 1
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
src, dst = sys.argv[1:]
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32).save_pretrained(dst)
AutoTokenizer.from_pretrained(src).save_pretrained(dst)
EOF
    cond=(--conditions "random-init weights: throughput only")
  fi
}

part_tiny() {
  setup_gpu_env || return 1
  "$PY" -m bench ppo_vs_trl --model tiny --device cuda --pairs 2 "${anchor[@]}" 2>&1 | tee "$LOG/ppo_vs_trl_tiny.log"
}

part_bench() {
  setup_gpu_env && model_for_bench || return 1
  local rc=0 roof=(--model "$bench_model" "${cond[@]}")
  # before: decoding with the eager loop (no update part); after: the static cache (auto = on) and the update MFU
  "$PY" -m bench gpu_roofline "${roof[@]}" --static-cache off --micro-batches "" --no-table \
    --out bench/results/gpu_roofline_static_off.json 2>&1 | tee "$LOG/gpu_roofline_static_off.log" || rc=1
  "$PY" -m bench gpu_roofline "${roof[@]}" 2>&1 | tee "$LOG/gpu_roofline.log" || rc=1
  "$PY" -m bench ppo_vs_trl --model "$bench_model" --device cuda --steps "${STEPS:-4}" --pairs 2 "${anchor[@]}" \
    "${cond[@]}" 2>&1 | tee "$LOG/ppo_vs_trl.log" || rc=1
  "$PY" -m bench ppo_vs_trl --model "$bench_model" --device cuda --steps 3 --pairs 1 --batch-size "${BIG:-128}" \
    "${anchor[@]}" "${cond[@]}" 2>&1 | tee "$LOG/ppo_vs_trl_b${BIG:-128}.log" || rc=1
  return $rc
}

part_full() {
  setup_gpu_env && model_for_bench || return 1
  "$PY" -m bench ppo_vs_trl --model "$bench_model" --device cuda --steps "${STEPS:-6}" --pairs 2 "${anchor[@]}" \
    "${cond[@]}" 2>&1 | tee "$LOG/ppo_vs_trl.log"
  "$PY" -m bench gpu_roofline --model "$bench_model" "${cond[@]}" 2>&1 | tee "$LOG/gpu_roofline.log"
}

collect() {
  [ -n "${RESULTS_TO:-}" ] || return 0
  mkdir -p "$RESULTS_TO"
  find bench/results -maxdepth 1 -name '*.json' -newer "$LOG/.started" -exec cp {} "$RESULTS_TO"/ \;
  cp docs/benchmarks.md "$RESULTS_TO"/
  tar czf "$RESULTS_TO/gpu-logs.tgz" -C "$LOG" .
  ls -l "$RESULTS_TO"
}

touch "$LOG/.started"
for part in "${@:-tests bench}"; do
  for p in $part; do
    echo "== $p"
    "part_$p" || { echo "== $p FAILED"; status=1; }
  done
done
collect
exit $status
