#!/usr/bin/env bash
# Seed 004: an AlphaPose FastPose (ResNet + DUC/PixelShuffle) -> TensorRT int8: the seed's
# IInt8EntropyCalibrator recipe (entropy on ~100 crops, a "CalibrationTable" cache written
# once) and graphkit's default plan, then the cache turned back into the TensorRT files
# with no images, and the int8 Q/DQ models scored against FP32 on COCO-MINI val2017.
#
#   bash examples/seeds/fastpose-tensorrt/run.sh [WORK_DIR]   (needs torch for the export)
# LIMIT=N scores only the first N val persons; SIZE="H W" and WIDTH set the network.
# Building the engine needs TensorRT and a GPU: the commands are in WORK_DIR/*/README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-fastpose-work}"
mkdir -p "$work"
export GRAPHKIT_ASSETS="${GRAPHKIT_ASSETS:-$here/../../../../shared/assets}"
spec="$here/spec.yaml"
size="${SIZE:-256 192}"
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
if [ "$size" != "256 192" ]; then  # the spec's input.size follows the export
  read -r h w <<< "$size"
  sed "s/size: \[256, 192\]/size: [$h, $w]/" "$here/spec.yaml" > "$work/spec.yaml"
  spec="$work/spec.yaml"
fi

echo "== 1. export (static 1x3xHxW, as TensorRT builds it)"
python "$here/model.py" --out "$work/fastpose_raw.onnx" --size $size --width "${WIDTH:-32}"

echo "== 2. clean: fold, fuse BatchNorm"
graphkit apply "$here/../../passes/default.yaml" "$work/fastpose_raw.onnx" -o "$work/fastpose.onnx"

echo "== 3a. the seed's recipe: entropy calibration, cache header EntropyCalibration"
graphkit calibrate "$work/fastpose.onnx" --data "$spec" --recipe plain --method entropy \
  -o "$work/entropy.json" --target tensorrt --out-dir "$work/entropy" \
  --trt-algorithm EntropyCalibration

echo "== 3b. graphkit's default plan, same TensorRT files"
graphkit calibrate "$work/fastpose.onnx" --data "$spec" -o "$work/plan.json" \
  --target tensorrt --out-dir "$work/default"

echo "== 4. later builds need no images: the TensorRT files again from the cache alone"
graphkit export "$work/entropy/tensorrt/CalibrationTable" "$work/fastpose.onnx" \
  --target tensorrt --out-dir "$work/rebuilt" --trt-algorithm EntropyCalibration
cmp "$work/entropy/tensorrt/CalibrationTable" "$work/rebuilt/tensorrt/CalibrationTable" \
  && echo "the rebuilt cache is byte-identical"

echo "== 5. COCO keypoint AP on val2017: FP32, then each int8 Q/DQ model against it"
graphkit eval "$work/fastpose.onnx" --model-config "$spec" "${limit[@]}" --json "$work/fp32.json"
for recipe in entropy default; do
  graphkit eval "$work/$recipe/tensorrt/model.qdq.onnx" --model-config "$spec" "${limit[@]}" \
    --agreement-with "$work/fp32.json" --json "$work/$recipe.eval.json"
done
