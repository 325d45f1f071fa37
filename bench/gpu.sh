#!/usr/bin/env bash
# The GPU benches in one short run, each under its own time limit, so a slow or failing one
# leaves the others' figures: AttentionInfluence on SmolLM2 and on a random 1.3B Llama, proxy
# training, the PreSelect loss loop. Each writes LOGS/NAME.log; LOGS/summary.txt has the exit codes.
#
#     bash bench/gpu.sh SmolLM2-135M-Instruct.Q4_1.gguf [LOGS]
#
# Needs torch with CUDA, transformers, gguf (the PreSelect part runs its loop only: no Beam).
set -u
gguf=${1:?usage: bash bench/gpu.sh MODEL.gguf [LOGS]}
logs=${2:-gpu-logs}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1

run() {  # NAME SECONDS SCRIPT ARGS...
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" python3 "$@" >"$logs/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s (limit $limit s)" | tee -a "$logs/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  uptime; } | tee "$logs/summary.txt"
run ai-smollm2 240 bench/attention_influence_bench.py --model "$gguf" --detect-probes 64 \
  --device cuda --dtype bfloat16 --docs 1024 --batch-tokens 65536
run ai-llama1b3 150 bench/attention_influence_bench.py --random-llama-1b3 --tokenizer "$gguf" \
  --device cuda --dtype bfloat16 --docs 1024 --batch-tokens 32768
run proxy 60 bench/proxy_bench.py --device cuda
run preselect 60 bench/preselect_bench.py --device cuda --loop-only
