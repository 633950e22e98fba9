#!/usr/bin/env bash
# What the 2026-11-29 session could not fit in its device time, as one call of about 8 minutes on one H200:
# clean medians and peaks at every size (a warm-up per size), block swap's cost, torch.compile's compile time and
# warm step. Results land in bench/results/ (copy them from there into $OUT).
#   run: bash bench/h200_followup.sh --comfyui .carry/ComfyUI      (carry .carry)
set -uo pipefail
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1
comfy=()
[ "${1:-}" = "--comfyui" ] && comfy=(--comfyui "../$2")
timeout 330 python3 bench_step.py "${comfy[@]}" --sizes 480x848x61f,544x960x129f,720x1280x129f \
    --variants ours-bf16,fp8-balanced,fp8-balanced+swap,native-bf16 \
    --runs 3 --warmup 1 --runs-rest 2 --warmup-rest 1 --profile 720x1280x129f
timeout 150 python3 bench_step.py --sizes 480x848x61f --variants ours-bf16,fp8-balanced+compile \
    --runs 3 --warmup 1 --no-save
