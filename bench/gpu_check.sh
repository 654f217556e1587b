#!/usr/bin/env bash
# GPU check for a lent GPU machine (at most ~8 minutes): SFT of a ~100M-parameter Llama-style
# model in bf16 through the platform's training path (modeling.ml.train, as the launched entry
# point runs it), tokens/s and MFU; then the same run under `accelerate launch` with the
# project's FSDP config (modeling/accelerate/fsdp.yaml) over every GPU the machine has.
#
#     bash bench/gpu_check.sh            # from the repository root, with .venv installed
#
# Written in a session that had no GPU machine: not yet run on one. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
GPUS=$(nvidia-smi -L | grep -c '^GPU ' || echo 1)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== one process, bf16 (strategy none)"
timeout 240 "$PY" bench/training_overhead.py --gpu --steps 120 --warmup-steps 20
echo "== FSDP over $GPUS process(es)"
timeout 240 "$PY" -m accelerate.commands.launch --config_file modeling/accelerate/fsdp.yaml \
    --num_processes "$GPUS" --main_process_port 29517 \
    bench/training_overhead.py --gpu --steps 120 --warmup-steps 20
