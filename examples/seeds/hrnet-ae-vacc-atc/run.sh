#!/usr/bin/env bash
# Seeds 002/003: an HRNet associative-embedding (bottom-up) model exported by mmpose's
# pytorch2onnx with H and W free -> clean graph (verified at a size it runs at) ->
#   vacc: shape fixed, letterboxed images, vamc build YAML + npz calibration set;
#   ATC:  short side resized, AMCT record + quant config + Q/DQ + input gears;
# and the int8 model scored against FP32 on COCO-MINI val2017 (persons matched by OKS).
#
#   bash examples/seeds/hrnet-ae-vacc-atc/run.sh [WORK_DIR]   (needs torch for the export)
# LIMIT=N calibrates on N images; SHORT=S sets the short side (and the fixed size for vacc).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-hrnet-ae-work}"
mkdir -p "$work"
export GRAPHKIT_ASSETS="${GRAPHKIT_ASSETS:-$here/../../../../shared/assets}"
short="${SHORT:-128}"
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
for s in short-side letterbox; do  # the specs' input.size follows SHORT
  sed "s/size: \[128, 128\]/size: [$short, $short]/" "$here/spec-$s.yaml" > "$work/spec-$s.yaml"
done

echo "== 1. export as mmpose's pytorch2onnx does: batch, height and width free"
python "$here/model.py" --out "$work/hrnet_ae_dynamic.onnx"

echo "== 2. clean: fold, fuse (verified at a size the multi-branch net runs at)"
graphkit apply "$here/../../passes/default.yaml" "$work/hrnet_ae_dynamic.onnx" -o "$work/hrnet_ae.onnx"

echo "== 3. Ascend ATC (seed 003): short-side geometry, gears, AMCT record, Q/DQ"
graphkit calibrate "$work/hrnet_ae.onnx" --data "$work/spec-short-side.yaml" "${limit[@]}" \
  -o "$work/atc-plan.json" --qdq "$work/hrnet_ae.int8.onnx" \
  --target atc --out-dir "$work/atc" --gear-short-side "$short"

echo "== 4. VastAI vacc (seed 002): one fixed shape, letterboxed images, vamc YAML + npz"
printf -- "- fix-shapes: {input: [1, 3, %s, %s]}\n" "$short" "$short" > "$work/fix.yaml"
graphkit apply "$work/fix.yaml" "$work/hrnet_ae.onnx" -o "$work/hrnet_ae_fixed.onnx"
graphkit calibrate "$work/hrnet_ae_fixed.onnx" --data "$work/spec-letterbox.yaml" "${limit[@]}" \
  -o "$work/vacc-plan.json" --target vacc --out-dir "$work/vacc"

echo "== 5. COCO keypoint AP on val2017 (whole images), 2 workers; int8 against FP32"
graphkit eval "$work/hrnet_ae.onnx" --model-config "$work/spec-short-side.yaml" --workers 2 \
  --json "$work/fp32.json"
graphkit eval "$work/hrnet_ae.int8.onnx" --model-config "$work/spec-short-side.yaml" --workers 2 \
  --agreement-with "$work/fp32.json" --json "$work/int8.json"
