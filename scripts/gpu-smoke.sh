#!/usr/bin/env bash
# GPU smoke test: before the first real search on a CUDA server, check every GPU path end to end
# and print the figures (docs/benchmarks.md, "GPU smoke", records them with the machine and the date).
#   bash scripts/gpu-smoke.sh              # uses .venv/bin/python if there is one, else python3
#   STEPS=20 BATCH=4 DEADLINE=570 bash scripts/gpu-smoke.sh
#   ONLY="2 3" bash scripts/gpu-smoke.sh   # only these steps (0, the set-up, always runs)
#   DEVICE=cpu ONLY="1 2 3 4" bash scripts/gpu-smoke.sh   # a dry run of the script itself without a GPU
#
# Made to fit one command of at most 10 minutes on one H100 (~10 min): every step has its own time
# limit and the whole script DEADLINE seconds (default 570); a step that fails or runs out of time
# is reported and the next one runs; a step that no longer fits says "skipped: out of time". Each
# step prints a line per figure; the summary at the end lists every step, its status and seconds,
# and the exit status is 1 when any step failed. The checks in Python are benchmarks/gpu_checks.py
# (each also runs with --device cpu on the tiny model: tests/test_gpu_checks.py).
#
# 0. set-up: the tiny fixtures, a scratch copy of the demo experiment
# 1. the environment: torch, CUDA build, driver (nvidia-smi), GPUs, `python -m bitsandbytes`, flash-attn
# 2. packed and padded batches give the same loss on the GPU (sdpa; flash_attention_2 when flash-attn
#    imports), on the tiny fixture and on a 2-layer model of LLaMA-2-7B's widths with random weights
# 3. peak memory of one LoRA training step at experiments/llama2-7b-valloss's largest rank (512,
#    dropout 0.1, batch 4 x 512 tokens) on the LLaMA-2-7B shape (random weights), beside bbo plan's figure
# 4. seconds of a local MMLU (--limit 20) of the tiny model with a rank-128 adapter, and without it
# 5. the demo search in bf16 with two evaluations at a time (two slots; on a one-GPU machine
#    both share GPU 0), each a real `accelerate launch` training plus a local MMLU on the GPU;
#    it checks every run trained on cuda in bfloat16
# 6. a local MMLU of the tiny model on the GPU, data-parallel over all GPUs when there are several
# 7. QLoRA: one point with a 4-bit base (skipped, and said so, when bitsandbytes is missing)
# 8. with 2 GPUs or more: (a) one point trained with launch.num_processes=2; (b) a QLoRA point
#    (model.quantization=4bit) with launch.num_processes=2, whose MMLU must run and give one result;
#    (c) with 4 GPUs or more, two 2-GPU slots side by side (launch.parallel=2, launch.num_processes=2)
# 9. the training-throughput benchmark on the LLaMA-2-7B shape (random weights, no download):
#    real tokens/s per GPU and MFU, project vs the original's setup at batch 4, then (9b) batch 32
#    (last: figures only, the longest step; what DEADLINE cuts first)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PY
export STEPS=${STEPS:-20}
export BATCH=${BATCH:-4}          # the original's per-device batch
export BIG_BATCH=${BIG_BATCH:-32} # the project's packed setup again with a batch that keeps an H100 busy
export EXP=experiments/_gpu-smoke # a scratch copy of the demo (git-ignored), so experiments/demo stays as it was
DEADLINE=${DEADLINE:-570}         # seconds for the whole script
ONLY=${ONLY:-}
export DEVICE=${DEVICE:-cuda}     # cpu: a dry run of the script on the tiny model (its figures mean nothing there)
T0=$(date +%s)
SUMMARY=()
FAILED=0

# run_step NUMBER "TITLE" LIMIT_SECONDS FUNCTION: the function in its own bash, killed (with its process
# group) after LIMIT_SECONDS or when the script's DEADLINE comes; its output also goes to
# $LOGS/step-NUMBER.log, and its status, seconds and figure lines to the summary at the end.
run_step() {
  local num=$1 title=$2 limit=$3 fn=$4
  printf '\n=== %s. %s\n' "$num" "$title"
  if [ -n "$ONLY" ] && [ "$num" != 0 ] && [[ " $ONLY " != *" ${num%%[a-z]*} "* ]] && [[ " $ONLY " != *" $num "* ]]; then
    echo "skipped: not in ONLY=\"$ONLY\""; SUMMARY+=("$(printf '%-3s %-56s %s' "$num" "$title" "skipped (ONLY)")"); return 0
  fi
  local left=$(( DEADLINE - ($(date +%s) - T0) - 15 ))
  if [ "$left" -lt 30 ]; then
    echo "skipped: out of time (${left} s left of DEADLINE=${DEADLINE})"
    SUMMARY+=("$(printf '%-3s %-56s %s' "$num" "$title" "skipped: out of time")"); return 0
  fi
  local cut=""
  if [ "$limit" -gt "$left" ]; then limit=$left; cut=" (cut short by DEADLINE)"; fi
  local t rc=0 status log="$LOGS/step-$num.log"
  t=$(date +%s)
  timeout -k 10 "$limit" bash -c "set -euo pipefail; $fn" 2>&1 | tee "$log" || rc=$?
  local dt=$(( $(date +%s) - t ))
  case $rc in
    0) status="ok" ;;
    124|137) status="TIMEOUT after ${limit} s$cut"; FAILED=1 ;;
    "$SKIP") status="skipped" ;;
    *) status="FAILED (exit $rc)"; FAILED=1 ;;
  esac
  echo "--- step $num: $status, ${dt} s"
  SUMMARY+=("$(printf '%-3s %-56s %-30s %4d s' "$num" "$title" "$status" "$dt")")
  while IFS= read -r line; do SUMMARY+=("      ${line:0:400}"); done < <(grep -E "$FIGURES" "$log" || true)
}
SKIP=77  # a step function's exit status for "skipped, and said why"
# the lines of a step's output that hold its figures or verdicts (repeated in the summary)
FIGURES='^(r[0-9]+-a[0-9]|torch |GPUs torch sees|  GPU [0-9]|driver: |bitsandbytes: |flash-attn: |packing, |memory, |mmlu-time, |mmlu [0-9.]+ on|demo search: |ok: |FAILED: |side by side: |[|] (project|original)|ratio |N = |skipped|error: |# Training throughput)'
LOGS=.cache/gpu-smoke
mkdir -p "$LOGS"

setup() {
  "$PY" -m fixtures >/dev/null
  rm -rf "$EXP" && mkdir -p "$EXP"
  sed 's/^name: demo$/name: _gpu-smoke/' experiments/demo/experiment.yaml > "$EXP/experiment.yaml"
  echo "fixtures in .cache/demo; scratch experiment $EXP"
}
env_step() { "$PY" -m benchmarks.gpu_checks env --device "$DEVICE"; }
packing_step() { "$PY" -m benchmarks.gpu_checks packing --device "$DEVICE"; }
memory_step() { "$PY" -m benchmarks.gpu_checks memory --device "$DEVICE"; }
mmlu_time_step() { "$PY" -m benchmarks.gpu_checks mmlu-time --device "$DEVICE" --limit 20 --base; }
demo_search() {
  local gpus since; gpus=$([ "$NGPU" -ge 2 ] && echo "[0,1]" || echo "[0,0]"); since=$(date +%s)
  if [ "$DEVICE" = cpu ]; then gpus=null; fi
  "$PY" -m bbo run "$EXP" "launch.device=$DEVICE" launch.parallel=2 "launch.gpus=$gpus" nomad.budget=4
  echo "demo search: $(( $(date +%s) - since )) s wall"
  "$PY" -m benchmarks.gpu_checks runs "$EXP" --since "$since" --min-runs 2 $([ "$DEVICE" = cpu ] || echo --expect-cuda-bf16)
}
local_mmlu() {
  local args=(-m eval.mmlu --model .cache/demo/tiny-llama --data-dir .cache/demo/mmlu --num-fewshot 2 --limit 20
              --batch-size 16 --device "$DEVICE" --out "$EXP/mmlu-smoke.json")
  local t; t=$(date +%s)
  if [ "$NGPU" -ge 2 ]; then
    "$PY" -m accelerate.commands.launch --multi_gpu --num_processes "$NGPU" --num_machines 1 --mixed_precision no \
        --dynamo_backend no "${args[@]}" >/dev/null
  else
    "$PY" "${args[@]}" >/dev/null
  fi
  "$PY" -c "import json; r = json.load(open('$EXP/mmlu-smoke.json')); print(f\"mmlu {r['mmlu']:.3f} on {r['mmlu_n']} questions, $NGPU process(es), $(( $(date +%s) - t )) s wall\")"
}
throughput_small() { "$PY" -m benchmarks.throughput --model-config llama2-7b --steps "$STEPS" --batch-size "$BATCH" $CPU_SHAPE; }
throughput_big() { "$PY" -m benchmarks.throughput --model-config llama2-7b --steps "$STEPS" --batch-size "$BIG_BATCH" --setups project $CPU_SHAPE; }
qlora_point() {
  if ! "$PY" -c "import bitsandbytes" 2>/dev/null; then echo "skipped: bitsandbytes is not installed"; return $SKIP; fi
  local since; since=$(date +%s)
  "$PY" -m blackbox -e "$EXP" --rank 8 --alpha 8 --dropout 0 --lr 1e-3 --set model.quantization=4bit \
      --set "launch.device=$DEVICE" --set launch.parallel=1 --set launch.gpus=null
  "$PY" -m benchmarks.gpu_checks runs "$EXP" --since "$since" --expect-one-mmlu
}
two_gpu_training() {
  if [ "$NGPU" -lt 2 ]; then echo "skipped: needs 2 GPUs (torch sees $NGPU)"; return $SKIP; fi
  local since; since=$(date +%s)
  "$PY" -m blackbox -e "$EXP" --rank 8 --alpha 16 --dropout 0 --lr 1e-3 --set launch.device=cuda \
      --set launch.num_processes=2 --set launch.parallel=1 --set launch.gpus=null
  "$PY" -m benchmarks.gpu_checks runs "$EXP" --since "$since" --expect-cuda-bf16 --expect-world-size 2 --expect-one-mmlu
}
two_gpu_qlora_mmlu() {
  if [ "$NGPU" -lt 2 ]; then echo "skipped: needs 2 GPUs (torch sees $NGPU)"; return $SKIP; fi
  if ! "$PY" -c "import bitsandbytes" 2>/dev/null; then echo "skipped: bitsandbytes is not installed"; return $SKIP; fi
  local since; since=$(date +%s)
  "$PY" -m blackbox -e "$EXP" --rank 8 --alpha 8 --dropout 0 --lr 1e-3 --set model.quantization=4bit \
      --set launch.device=cuda --set launch.num_processes=2 --set launch.parallel=1 --set launch.gpus=null
  "$PY" -m benchmarks.gpu_checks runs "$EXP" --since "$since" --expect-world-size 2 --expect-one-mmlu
}
two_slots() {
  if [ "$NGPU" -lt 4 ]; then echo "skipped: needs 4 GPUs (torch sees $NGPU)"; return $SKIP; fi
  local since; since=$(date +%s)
  printf '3 2 1 -3.5\n3 1 1 -2.5\n' > "$EXP/two-slots.txt"  # NOMAD's coordinates: rank 8, alpha 16 / 8, dropout 0
  "$PY" -m blackbox -e "$EXP" "$EXP/two-slots.txt" --set launch.device=cuda --set launch.num_processes=2 \
      --set launch.parallel=2 --set launch.gpus=null
  "$PY" -m benchmarks.gpu_checks runs "$EXP" --since "$since" --min-runs 2 --expect-cuda-bf16 --expect-world-size 2 \
      --expect-overlap
}
export -f setup env_step packing_step memory_step mmlu_time_step demo_search local_mmlu throughput_small \
          throughput_big qlora_point two_gpu_training two_gpu_qlora_mmlu two_slots
export SKIP

printf '=== GPU smoke, %s, DEADLINE %s s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$DEADLINE"
nvidia-smi -L || echo "nvidia-smi: not found (torch decides anyway)"
NGPU=$("$PY" -m benchmarks.gpu_checks ngpu)
if [ "$NGPU" -lt 1 ] && [ "$DEVICE" != cpu ]; then
  echo "error: torch sees no GPU: this script is for a CUDA machine (DEVICE=cpu: a dry run of the script)" >&2; exit 1
fi
export NGPU
export CPU_SHAPE=$([ "$DEVICE" = cpu ] && echo "--layers 2 --quick" || true)  # the 7B shape cut to 2 layers on CPU

run_step 0  "set-up: fixtures, scratch experiment"                    150 setup
run_step 1  "environment"                                             120 env_step
run_step 2  "packed vs padded loss on the GPU"                        150 packing_step
run_step 3  "peak memory at the largest rank vs bbo plan"             200 memory_step
run_step 4  "MMLU --limit 20, rank-128 adapter: seconds"              150 mmlu_time_step
run_step 5  "demo search in bf16, two evaluations at a time"          240 demo_search
run_step 6  "local MMLU on the GPU ($NGPU process(es))"               100 local_mmlu
run_step 7  "QLoRA: one point with a 4-bit base"                      150 qlora_point
run_step 8a "2 GPUs: one point with launch.num_processes=2"           180 two_gpu_training
run_step 8b "2 GPUs: QLoRA point + MMLU, num_processes=2"             180 two_gpu_qlora_mmlu
run_step 8c "4 GPUs: two 2-GPU slots side by side"                    240 two_slots
run_step 9  "throughput, LLaMA-2-7B shape, batch $BATCH, $STEPS steps" 240 throughput_small
run_step 9b "throughput, project setup, batch $BIG_BATCH"             120 throughput_big

printf '\n=== summary (%s s of DEADLINE=%s)\n' "$(( $(date +%s) - T0 ))" "$DEADLINE"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
