#!/usr/bin/env bash
# GPU smoke test: before the first real search on a CUDA server, check every GPU path end to end
# and print the figures (docs/benchmarks.md records them with the machine and the date).
#   bash scripts/gpu-smoke.sh              # uses .venv/bin/python if there is one, else python3
#   STEPS=30 BATCH=4 bash scripts/gpu-smoke.sh
#
# 1. the environment torch sees (GPUs, bf16, versions)
# 2. the demo search in bf16 with two evaluations at a time (two slots; on a one-GPU machine
#    both share GPU 0), each a real `accelerate launch` training plus a local MMLU on the GPU;
#    it checks every run trained on cuda in bfloat16
# 3. a local MMLU of the tiny model on the GPU, data-parallel over all GPUs when there are several
# 4. the training-throughput benchmark on the LLaMA-2-7B shape (random weights, no download):
#    real tokens/s per GPU and MFU, project vs the original's setup at batch 4, then batch 32
# 5. QLoRA: one point with a 4-bit base (skipped, and said so, when bitsandbytes is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS=${STEPS:-30}
BATCH=${BATCH:-4}          # the original's per-device batch
BIG_BATCH=${BIG_BATCH:-32} # the project's packed setup again with a batch that keeps an H100 busy
EXP=experiments/_gpu-smoke   # a scratch copy of the demo (git-ignored), so experiments/demo stays as it was

step() { printf '\n=== %s\n' "$*"; }

step "1. environment"
nvidia-smi -L || echo "nvidia-smi: not found (torch decides anyway)"
NGPU=$("$PY" - <<'EOF'
import torch, transformers, peft, accelerate
ok = torch.cuda.is_available()
n = torch.cuda.device_count() if ok else 0
import sys
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"peft {peft.__version__}, accelerate {accelerate.__version__}", file=sys.stderr)
for i in range(n):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}", file=sys.stderr)
print(n)
EOF
)
if [ "$NGPU" -lt 1 ]; then echo "error: torch sees no GPU: this script is for a CUDA machine" >&2; exit 1; fi

step "2. demo search in bf16, two evaluations at a time"
"$PY" -m fixtures >/dev/null
rm -rf "$EXP" && mkdir -p "$EXP"
sed 's/^name: demo$/name: _gpu-smoke/' experiments/demo/experiment.yaml > "$EXP/experiment.yaml"
GPUS=$([ "$NGPU" -ge 2 ] && echo "[0,1]" || echo "[0,0]")
t0=$(date +%s)
"$PY" -m bbo run "$EXP" launch.device=cuda launch.parallel=2 "launch.gpus=$GPUS" nomad.budget=6
echo "demo search: $(( $(date +%s) - t0 )) s wall"
"$PY" - "$EXP" <<'EOF'
import json, sys
from pathlib import Path
runs = [d for d in (Path(sys.argv[1]) / "runs").iterdir() if (d / "metrics.json").exists()]
assert runs, "no finished run"
for d in sorted(runs):
    m = json.loads((d / "metrics.json").read_text())
    assert m["device"] == "cuda" and m["dtype"] == "bfloat16" and m["precision"] == "bf16", (d.name, m["device"], m["dtype"])
    print(f"{d.name}: {m['device']} {m['dtype']}/{m['precision']}  val_loss {m['val_loss']:.4f}  "
          f"mmlu {m.get('mmlu', float('nan')):.3f}  train {m['train_seconds']:.1f} s  mmlu {m.get('mmlu_seconds', 0):.1f} s")
print(f"ok: {len(runs)} runs trained on cuda in bf16")
EOF

step "3. local MMLU on the GPU ($NGPU process(es))"
MMLU_ARGS=(-m eval.mmlu --model .cache/demo/tiny-llama --data-dir .cache/demo/mmlu --num-fewshot 2 --limit 20
           --batch-size 16 --out "$EXP/mmlu-smoke.json")
if [ "$NGPU" -ge 2 ]; then
  "$PY" -m accelerate.commands.launch --multi_gpu --num_processes "$NGPU" --num_machines 1 --mixed_precision no \
      --dynamo_backend no "${MMLU_ARGS[@]}" >/dev/null
else
  "$PY" "${MMLU_ARGS[@]}" >/dev/null
fi
"$PY" -c "import json; r = json.load(open('$EXP/mmlu-smoke.json')); print(f\"mmlu {r['mmlu']:.3f} on {r['mmlu_n']} questions\")"

step "4. training throughput, LLaMA-2-7B shape (random weights), batch $BATCH, $STEPS steps"
"$PY" -m benchmarks.throughput --model-config llama2-7b --steps "$STEPS" --batch-size "$BATCH"
step "4b. the same, project setup only, batch $BIG_BATCH"
"$PY" -m benchmarks.throughput --model-config llama2-7b --steps "$STEPS" --batch-size "$BIG_BATCH" --setups project

step "5. QLoRA: one point with a 4-bit base"
if "$PY" -c "import bitsandbytes" 2>/dev/null; then
  "$PY" -m blackbox -e "$EXP" --rank 8 --alpha 8 --dropout 0 --lr 1e-3 --set model.quantization=4bit \
      --set launch.device=cuda --set launch.parallel=1 --set launch.gpus=null
else
  echo "skipped: bitsandbytes is not installed"
fi
step "done"
