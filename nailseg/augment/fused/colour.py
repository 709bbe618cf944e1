"""Colour-space conversions as Triton device functions, for the fused kernels of ``kornia_gpu``.

Each function here is a ``@triton.jit`` function meant to be called from another kernel on
``float32`` blocks, elementwise: three planes in, three planes out. They are written by hand
because no library offers these conversions as Triton device functions, and a fused augmentation
kernel needs them inline (an RGB -> HSV -> RGB or RGB -> Lab -> RGB detour inside one kernel,
without a round trip through memory per step). They mirror Kornia 0.9's definitions
(``kornia.color.rgb_to_hsv``, ``hsv_to_rgb``, ``rgb_to_lab``, ``lab_to_rgb``), which remain the
reference: the same formulas, constants, thresholds, clamps and operation order, in ``float32``.

Where they can differ from Kornia by an ulp or so (``tests/test_fused_colour.py`` measures it):

- ``pow`` is ``exp2(y * log2(x))`` (there is no core ``tl.pow``); on a GPU ``tl.exp2`` and
  ``tl.log2`` are the hardware approximations, a little less exact than under the interpreter;
- divisions are IEEE (``tl.math.div_rn``; Triton's ``/`` is an approximate division on NVIDIA),
  as in Kornia on a CPU; Kornia on CUDA divides by a Python scalar as a multiplication by its
  reciprocal;
- the 3x3 matrix products sum in a fixed order; torch's ``einsum``/``conv2d`` may not;
- Triton contracts ``a * b + c`` into a fused multiply-add by default (``enable_fp_fusion``).

NaN inputs are not handled as torch does (``tl.maximum``/``tl.minimum`` need not propagate NaN).
"""

import triton
import triton.language as tl

# Constants are written as literals inside the jit functions (Triton reads no non-constexpr
# globals); a Python float there becomes a float32 constant, rounded as torch rounds a Python
# scalar against a float32 tensor. Decimal literals stand for Kornia's expressions:
#   6.283185307179586   = 2.0 * math.pi
#   0.13793103448275862 = 4.0 / 29.0
#   0.3333333333333333  = 1 / 3.0
#   0.4166666666666667  = 1 / 2.4


@triton.jit
def remainder(x, y):
    """``torch.remainder(x, y)`` for floats: the result has the sign of ``y``.

    Triton's ``%`` on floats is C's ``fmod`` (exact, sign of ``x``); torch computes ``fmod`` and
    adds ``y`` when the signs differ, and so does this, so the two agree bit for bit.
    """
    m = x % y
    return tl.where((m != 0.0) & ((m < 0.0) != (y < 0.0)), m + y, m)


@triton.jit
def _pow(x, y):
    """``x ** y`` for ``x > 0`` as ``exp2(y * log2(x))`` (``x == 0`` gives 0 for ``y > 0``)."""
    return tl.exp2(y * tl.log2(x))


@triton.jit
def rgb_to_hsv(r, g, b):
    """Kornia's ``rgb_to_hsv`` (``eps=1e-8``): RGB in [0, 1] -> ``(h, s, v)``, hue in
    radians in [0, 2π), grey pixels with hue 0."""
    max_rgb = tl.maximum(tl.maximum(r, g), b)
    min_rgb = tl.minimum(tl.minimum(r, g), b)
    deltac = max_rgb - min_rgb
    s = tl.math.div_rn(deltac, tl.where(max_rgb == 0.0, 1.0, max_rgb + 1e-8))
    deltac = tl.where(deltac == 0.0, 1.0, deltac)
    rc = max_rgb - r
    gc = max_rgb - g
    bc = max_rgb - b
    h1 = bc - gc
    h2 = (rc - bc) + 2.0 * deltac
    h3 = (gc - rc) + 4.0 * deltac
    # The sextant of the first maximal channel (torch.max's tie-break), as Kornia selects it.
    h = tl.where((r >= g) & (r >= b), h1, tl.where(g >= b, h2, h3))
    h = tl.math.div_rn(h, deltac)
    h = remainder(tl.math.div_rn(h, 6.0), 1.0)
    h = 6.283185307179586 * h
    # A tiny negative hue rounds up to the period itself: fold it to 0, as Kornia does.
    h = tl.where(h >= 6.283185307179586, 0.0, h)
    return h, s, max_rgb


@triton.jit
def hsv_to_rgb(h, s, v):
    """Kornia's ``hsv_to_rgb``: ``(h, s, v)`` with hue in radians -> ``(r, g, b)``."""
    h = tl.math.div_rn(h, 6.283185307179586)
    h6 = h * 6.0
    hi = remainder(tl.floor(h6), 6.0)
    f = remainder(h6, 6.0) - hi
    p = v * (1.0 - s)
    q = v * (1.0 - f * s)
    t = v * (1.0 - (1.0 - f) * s)
    # Kornia clamps hi (as an integer) to 0..5 and picks a row of the table
    # r: v q p p t v / g: t v v q p p / b: p p t v v q; the ">=" chain is that clamp
    # (below 1, NaN included, is sextant 0; 5 and above is sextant 5).
    m5 = hi >= 5.0
    m4 = hi >= 4.0
    m3 = hi >= 3.0
    m2 = hi >= 2.0
    m1 = hi >= 1.0
    r = tl.where(m5, v, tl.where(m4, t, tl.where(m3, p, tl.where(m2, p, tl.where(m1, q, v)))))
    g = tl.where(m5, p, tl.where(m4, p, tl.where(m3, q, tl.where(m2, v, tl.where(m1, v, t)))))
    b = tl.where(m5, q, tl.where(m4, v, tl.where(m3, v, tl.where(m2, t, tl.where(m1, p, p)))))
    return r, g, b


@triton.jit
def _srgb_to_linear(c):
    """Kornia's ``rgb_to_linear_rgb`` for one channel."""
    # Kornia clamps c + 0.055 at 0; a floor of 1e-30 instead keeps log2 finite on the lanes the
    # where() discards anyway (c <= -0.055), and changes nothing on the lanes it keeps.
    base = tl.math.div_rn(tl.maximum(c + 0.055, 1e-30), 1.055)
    return tl.where(c > 0.04045, _pow(base, 2.4), tl.math.div_rn(c, 12.92))


@triton.jit
def _linear_to_srgb(c):
    """Kornia's ``linear_rgb_to_rgb`` for one channel."""
    srgb = 1.055 * _pow(tl.maximum(c, 0.0031308), 0.4166666666666667) - 0.055
    return tl.where(c > 0.0031308, srgb, 12.92 * c)


@triton.jit
def _lab_f(t):
    """The CIE Lab companding of one white-normalised XYZ channel, as Kornia writes it."""
    power = _pow(tl.maximum(t, 0.008856), 0.3333333333333333)
    return tl.where(t > 0.008856, power, 7.787 * t + 0.13793103448275862)


@triton.jit
def _lab_f_inv(f):
    """The inverse of :func:`_lab_f`, as Kornia writes it (``f ** 3`` as two multiplications,
    which is what ``torch.pow(f, 3.0)`` computes)."""
    scale = tl.math.div_rn(f - 0.13793103448275862, 7.787)
    return tl.where(f > 0.2068966, f * f * f, scale)


@triton.jit
def rgb_to_lab(r, g, b):
    """Kornia's ``rgb_to_lab``: sRGB in [0, 1] -> ``(L, a, b)``, D65 white, L in 0..100."""
    lr = _srgb_to_linear(r)
    lg = _srgb_to_linear(g)
    lb = _srgb_to_linear(b)
    # kornia.color.rgb_to_xyz, then divided by the D65 white (0.95047, 1.0, 1.08883).
    x = 0.412453 * lr + 0.357580 * lg + 0.180423 * lb
    y = 0.212671 * lr + 0.715160 * lg + 0.072169 * lb
    z = 0.019334 * lr + 0.119193 * lg + 0.950227 * lb
    fx = _lab_f(tl.math.div_rn(x, 0.95047))
    fy = _lab_f(y)  # y / 1.0
    fz = _lab_f(tl.math.div_rn(z, 1.08883))
    lightness = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b_ = 200.0 * (fy - fz)
    return lightness, a, b_


@triton.jit
def lab_to_rgb(lightness, a, b_):
    """Kornia's ``lab_to_rgb`` with ``clip=True``: ``(L, a, b)`` -> sRGB clamped to [0, 1]."""
    fy = tl.math.div_rn(lightness + 16.0, 116.0)
    fx = tl.math.div_rn(a, 500.0) + fy
    fz = fy - tl.math.div_rn(b_, 200.0)
    fz = tl.maximum(fz, 0.0)
    x = _lab_f_inv(fx) * 0.95047
    y = _lab_f_inv(fy)  # * 1.0
    z = _lab_f_inv(fz) * 1.08883
    # kornia.color.xyz_to_rgb
    lr = 3.2404813432005266 * x + -1.5371515162713185 * y + -0.4985363261688878 * z
    lg = -0.9692549499965682 * x + 1.8759900014898907 * y + 0.0415559265582928 * z
    lb = 0.0556466391351772 * x + -0.2040413383665112 * y + 1.0573110696453443 * z
    r = tl.minimum(tl.maximum(_linear_to_srgb(lr), 0.0), 1.0)
    g = tl.minimum(tl.maximum(_linear_to_srgb(lg), 0.0), 1.0)
    b = tl.minimum(tl.maximum(_linear_to_srgb(lb), 0.0), 1.0)
    return r, g, b
