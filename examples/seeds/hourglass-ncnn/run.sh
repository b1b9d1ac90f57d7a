#!/usr/bin/env bash
# Seeds 000/001: an mmpose Hourglass exported with its flip test -> clean graph -> ncnn
# int8, with ncnn2table's recipe (KL, calibrated on the ncnn model) and with graphkit's
# default plan, each run in ncnn and scored against FP32 on COCO-MINI val2017.
#
#   bash examples/seeds/hourglass-ncnn/run.sh [WORK_DIR]     (needs torch for the export)
# LIMIT=N scores only the first N val persons; SIZE="H W" and CHANNELS set the network.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-hourglass-work}"
mkdir -p "$work"
export GRAPHKIT_ASSETS="${GRAPHKIT_ASSETS:-$here/../../../../shared/assets}"
spec="$here/spec.yaml"
size="${SIZE:-128 96}"
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
if [ "$size" != "128 96" ]; then  # the spec's input.size follows the export
  read -r h w <<< "$size"
  sed "s/size: \[128, 96\]/size: [$h, $w]/" "$here/spec.yaml" > "$work/spec.yaml"
  spec="$work/spec.yaml"
fi

echo "== 1. export as mmdeploy does: flip test and every stage output in the graph"
python "$here/model.py" --out "$work/hourglass_flip.onnx" --size $size \
  --channels "${CHANNELS:-32}" --flip-test

echo "== 2. drop the flip test and the extra stage, fold, fuse"
graphkit apply "$here/../../passes/mmpose.yaml" "$work/hourglass_flip.onnx" -o "$work/hourglass.onnx"

echo "== 3a. the seeds' recipe: the float model to ncnn (pnnx), ncnn2table with KL and"
echo "       6-bit 3x3 weights on the ncnn model itself, then ncnn2int8"
python -c "import sys; from graphkit.model import load_model; from graphkit.backends.ncnn.convert import convert; convert(load_model(sys.argv[1]), sys.argv[2])" \
  "$work/hourglass.onnx" "$work/ncnn_fp32"
graphkit calibrate "$work/ncnn_fp32/model.ncnn.param" --data "$spec" --method kl-ncnn \
  --ncnn-winograd-6bit --out-dir "$work/kl"

echo "== 3b. graphkit's default plan (measured on held-out crops), same ncnn files"
graphkit calibrate "$work/hourglass.onnx" --data "$spec" -o "$work/plan.json" \
  --target ncnn --out-dir "$work/default"

echo "== 4. COCO keypoint AP on val2017: FP32, then each ncnn int8 against it"
graphkit eval "$work/hourglass.onnx" --model-config "$spec" "${limit[@]}" --json "$work/fp32.json"
graphkit eval "$work/kl/model.int8.param" --model-config "$spec" "${limit[@]}" \
  --agreement-with "$work/fp32.json" --json "$work/kl.eval.json"
graphkit eval "$work/default/ncnn/model.int8.param" --model-config "$spec" "${limit[@]}" \
  --agreement-with "$work/fp32.json" --json "$work/default.eval.json"
