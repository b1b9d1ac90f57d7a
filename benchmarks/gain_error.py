"""How much of the int8 error is a per-channel gain? (Is "variance correction" worth building?)

    python benchmarks/gain_error.py [--models posenet ...]

Bias correction removes each int8 Conv output channel's mean shift. Banner et al. (2019)
also rescale each channel, which a plan could carry for free (the channel's weight
scale times a factor: the integers stay). Per shared model, this takes the default plan,
runs its Q/DQ model and the FP32 model on the held-out crops, and for every int8 Conv
output regresses each int8 channel z on the FP32 channel y (z ~ g y + h: g and h are what
a gain and offset correction could undo, (z - h) / g) and prints how much of the summed
squared error z - y would remain after that correction, over all Convs together, how
much of it is the channels' mean offsets (what bias correction, measured on the fit crops,
left or made), and the Conv with the largest share of it. The regression is per channel on every
position of the crops, the upper bound of what a per-channel affine correction can do
layer by layer (not counting how corrections downstream interact).
"""

from __future__ import annotations

import argparse

import numpy as np
from heldout import MODELS, held_out_setup


def channel_moments(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Sums per channel (axis 1): y, z, y^2, z^2, y z and the count, float64 (6, C)."""
    c = y.shape[1] if y.ndim > 1 else 1
    y = np.moveaxis(y, 1, 0).reshape(c, -1).astype(np.float64)
    z = np.moveaxis(z, 1, 0).reshape(c, -1).astype(np.float64)
    return np.stack(
        [y.sum(1), z.sum(1), (y * y).sum(1), (z * z).sum(1), (y * z).sum(1), np.full(c, y.shape[1])]
    )


def remaining_after_gain(m: np.ndarray) -> tuple[float, float, float]:
    """(summed squared error z - y, what remains of it after (z - h) / g per channel, the
    part of it that is each channel's mean offset)."""
    sy, sz, syy, szz, syz, n = m
    my, mz = sy / n, sz / n
    vy, vz, cov = syy / n - my**2, szz / n - mz**2, syz / n - my * mz
    error = (syy - 2 * syz + szz).sum()
    g = cov / np.maximum(vy, 1e-30)
    residual = np.maximum(vz - g * cov, 0.0) * n  # sum of (z - g y - h)^2
    offset = ((mz - my) ** 2 * n).sum()
    return float(error), float((residual / np.maximum(g * g, 1e-12)).sum()), float(offset)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    args = ap.parse_args()

    from graphkit.quant.bias import int8_convs
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.quantize import quantize, recipe_of
    from graphkit.runtime.ort import make_session, with_outputs

    print(
        "| model | int8 Convs | error left after per-channel gain + offset | offset part "
        "| largest Conv: share of the error, offset part, read by |"
    )
    print("|---|---|---|---|---|")
    for name in args.models:
        model, spec, _, scorer = held_out_setup(name)
        plan = quantize(model, spec, recipe_of("default"))
        qdq = insert_qdq(plan.deploy_model(model), plan)
        convs = [n.output[0] for n in int8_convs(qdq)]
        readers = {t: n.op_type for n in model.graph.node for t in n.input}
        fp32 = make_session(with_outputs(model, convs))
        int8 = make_session(with_outputs(qdq, convs), as_written=True)
        sums: dict[str, np.ndarray] = {}
        for feeds in scorer.samples:
            for t, y, z in zip(convs, fp32.run(convs, feeds), int8.run(convs, feeds)):
                sums[t] = sums.get(t, 0) + channel_moments(y, z)
        per_conv = {t: remaining_after_gain(m) for t, m in sums.items()}
        total = sum(e for e, _, _ in per_conv.values())
        left = sum(r for _, r, _ in per_conv.values())
        offset = sum(o for _, _, o in per_conv.values())
        top = max(per_conv, key=lambda t: per_conv[t][0])
        e, _, o = per_conv[top]
        print(
            f"| {name} | {len(convs)} | {left / total:.1%} | {offset / total:.1%} "
            f"| `{top}`: {e / total:.1%}, {o / e:.1%}, {readers.get(top, 'output')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
