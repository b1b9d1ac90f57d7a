"""Pose-specific pieces below quantization and evaluation: decoders (model outputs ->
keypoints) and OKS (how two keypoint sets compare)."""
