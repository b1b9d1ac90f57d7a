"""Executors: run a model and hand back outputs or chosen intermediate tensors."""
