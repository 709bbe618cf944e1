"""Compile every fused kernel for an NVIDIA GPU without one: Triton's own compiler and ptxas.

Run by ``tests/test_fused_engine.py`` in a subprocess without ``TRITON_INTERPRET`` (the
interpreter checks what the kernels compute; this checks that the CUDA compiler accepts them,
which the interpreter does not). Usage: ``python tests/fused_compile_check.py [ARCH]`` (default 90:
H100/H200); prints one line per kernel variant and exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from nailseg.augment.fused import kernels
from nailseg.augment.fused.clahe import clahe_lut_kernel

F32, FP, I32, C = "*fp32", "fp32", "i32", "constexpr"
PIXELS = dict(height=I32, width=I32)
WARP = dict(image_ptr="*u8", mask_ptr="*u8", table_ptr=F32, seeds_ptr="*i64", work_ptr=F32)
WARP |= dict(mask_out_ptr=F32, **PIXELS, image_sb=I32, image_sc=I32, image_sy=I32)
WARP |= dict(image_sx=I32, mask_sb=I32, mask_sy=I32, mask_sx=I32, BILINEAR=C, NOISE=C, BLOCK=C)
BLUR = dict(work_ptr=F32, table_ptr=F32, out_ptr=F32, hist_ptr="*i32", **PIXELS, tile_h=I32)
BLUR |= dict(tile_w=I32, KSIZE=C, BLUR=C, CLAHE=C, GRID=C, BLOCK=C)
LUTS = dict(hist_ptr="*i32", lut_ptr=F32, params_ptr=F32, params_stride=I32, pixels=I32)
LUTS |= dict(lut_scale=FP, CLIP_COL=C, OP_COL=C, CLAHE_OP=C, GRID=C)


def finish(out: str) -> dict[str, str]:
    signature = dict(work_ptr=F32, table_ptr=F32, lut_ptr=F32, out_ptr=out, **PIXELS)
    signature |= dict(tile_h=I32, tile_w=I32, out_sb=I32, out_sc=I32, out_sy=I32, out_sx=I32)
    signature |= {f"{k}_{c}": FP for k in ("scale", "shift") for c in "rgb"}
    return signature | dict(HSV=C, CLAHE=C, BC=C, GRID=C, BLOCK=C)


PARAMS = dict(seeds_ptr="*i64", pol_ptr=F32, table_ptr=F32, count=I32, width=FP, height=FP)
VARIANTS = [
    ("params", kernels.params_kernel, PARAMS | dict(BLOCK=C), dict(BLOCK=128)),
    ("warp bilinear+noise", kernels.warp_noise_kernel, WARP, dict(BILINEAR=1, NOISE=1, BLOCK=1024)),
    ("warp nearest", kernels.warp_noise_kernel, WARP, dict(BILINEAR=0, NOISE=0, BLOCK=1024)),
    (
        "blur+histograms",
        kernels.blur_kernel,
        BLUR,
        dict(KSIZE=7, BLUR=1, CLAHE=1, GRID=8, BLOCK=1024),
    ),
    (
        "histograms only",
        kernels.blur_kernel,
        BLUR,
        dict(KSIZE=1, BLUR=0, CLAHE=1, GRID=4, BLOCK=1024),
    ),
    ("clahe luts", clahe_lut_kernel, LUTS, dict(CLIP_COL=16, OP_COL=12, CLAHE_OP=1, GRID=8)),
]
for out in ("*bf16", "*fp16", "*fp32"):
    constants = dict(HSV=1, CLAHE=1, BC=1, GRID=8, BLOCK=1024)
    VARIANTS.append((f"finish {out[1:]}", kernels.finish_kernel, finish(out), constants))


def main(arch: int) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("run without TRITON_INTERPRET=1: the interpreter does not compile")
    target = GPUTarget("cuda", arch, 32)
    for name, kernel, signature, constants in VARIANTS:
        options = {"num_warps": 4, "enable_fp_fusion": name != "params"}
        compiled = triton.compile(ASTSource(kernel, signature, constants), target, options)
        print(f"sm_{arch} {name}: cubin {len(compiled.asm['cubin'])} bytes")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
