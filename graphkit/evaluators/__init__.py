"""Check a converted or quantized model: COCO keypoint AP and per-tensor numeric diff.

decoders    raw pose-network outputs -> COCO-17 keypoints in model-input pixels
coco        pycocotools keypoint AP, GT masking of unpredicted joints, OKS agreement
evaluate    top-down evaluation on onnxruntime or ncnn, split over worker processes
metrics     streaming cosine / SQNR / relative L2 / max error (running sums only)
executors   one "run these tensors" interface over onnxruntime and ncnn
graphinfo   which tensors of a Q/DQ model are comparable and which layers are int8
diff        tensor-by-tensor comparison of two models over real inputs
per_layer   one-layer-at-a-time quantization errors
report_html the self-contained HTML diff report
"""
