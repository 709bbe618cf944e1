"""Fused Triton kernels of the kornia_gpu engine (see ops.py)."""
