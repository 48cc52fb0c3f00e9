#!/usr/bin/env bash
# The GPU checks, in the order to run them on a machine with a CUDA GPU:
#   bench/gpu_check.sh            # all three parts
#   bench/gpu_check.sh tests      # the PPO, generation and reward-model tests, on the GPU (tiny models)
#   bench/gpu_check.sh tiny       # PPO vs TRL 1.12, quick mode, on the GPU
#   bench/gpu_check.sh full       # PPO vs TRL 1.12 on SmolLM2-135M-Instruct + the roofline figures
# Environment: PYTHON (default python3), TRL_PYTHON (an interpreter with TRL 1.12; default: the bench's own
# environment, created on first use), MODEL (default smollm2-135m-instruct), RANDOM_INIT=1 (the model's
# architecture with random weights, when the weights are not at hand: throughput only), LOG (a folder for logs).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODEL=${MODEL:-smollm2-135m-instruct}
LOG=${LOG:-bench/results/gpu-logs}
mkdir -p "$LOG"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
anchor=()
[ -n "${TRL_PYTHON:-}" ] && anchor=(--anchor-python "$TRL_PYTHON")
status=0

part_tests() {
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())" || return 1
  # accelerator_device() picks the GPU when one is visible, so these run the CUDA path.
  local k=()
  "$PY" -c "import dvc" 2>/dev/null || k=(-k "not dvc")  # a GPU box with the learning stack only
  "$PY" -m pytest -q -p no:cacheprovider -o addopts="" "${k[@]}" \
    tests/unit/test_ppo_core.py tests/unit/test_generation_rows.py tests/unit/test_precision.py \
    tests/integration/test_ppo_tiny.py tests/integration/test_reward_tiny.py \
    tests/integration/test_reward_frozen_cache.py 2>&1 | tee "$LOG/tests.log"
}

part_tiny() {
  "$PY" -m bench ppo_vs_trl --model tiny --device cuda --pairs 2 "${anchor[@]}" 2>&1 | tee "$LOG/ppo_vs_trl_tiny.log"
}

part_full() {
  local model=$MODEL cond=()
  if [ "${RANDOM_INIT:-0}" = 1 ]; then
    # MODEL is a folder with the config and tokenizer; both trainers get the same random weights.
    model=$LOG/random-init-model
    "$PY" - "$MODEL" "$model" <<'EOF' || return 1
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
src, dst = sys.argv[1:]
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32).save_pretrained(dst)
AutoTokenizer.from_pretrained(src).save_pretrained(dst)
EOF
    cond=(--conditions "random-init weights: throughput only")
  fi
  "$PY" -m bench ppo_vs_trl --model "$model" --device cuda --steps "${STEPS:-6}" --pairs 2 "${anchor[@]}" \
    "${cond[@]}" 2>&1 | tee "$LOG/ppo_vs_trl.log"
  "$PY" -m bench gpu_roofline --model "$model" 2>&1 | tee "$LOG/gpu_roofline.log"
}

for part in "${@:-tests tiny full}"; do
  for p in $part; do
    echo "== $p"
    "part_$p" || { echo "== $p FAILED"; status=1; }
  done
done
exit $status
