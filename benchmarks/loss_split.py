"""How much of the default plan's int8 loss is the activations' grid, and which tensors.

Per shared model: the default plan (`graphkit.quantize`, train2017 crops), its Q/DQ
model on the val2017 crops (COCO AP, agreement with FP32 +- the 95 % half-width over the
persons), and the same model with every activation Q/DQ pair removed: the plan's int8
weights and float layers, float activations. What that variant gains (paired, person by
person) is what the activations' 8-bit grid costs; what it still lacks is the weights'.
With `--per-tensor N`: each activation alone int8 on top of that variant, the N that cost
most (paired against the variant; one val2017 evaluation per activation), and the default
with every int8 reader of the costliest one float too (over the float budget: what the
greedy float search, one layer at a time, cannot see). Also printed: how much finer an
asymmetric grid (zero point, the full [min, max] on 255 steps) would make each signed
activation's step than the symmetric one, 2 max(|min|, max) / (max - min).

    python benchmarks/loss_split.py [--models posenet ...] [--per-tensor 10]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import onnx
from heldout import MODELS, ROOT, assets, val_args


def without_activation_qdq(qdq: onnx.ModelProto, keep: str | None = None) -> onnx.ModelProto:
    """`qdq` with the Q/DQ pair of every activation (a QuantizeLinear not reading an
    initializer) but `keep` removed: readers of the DequantizeLinear read the float tensor."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    constants = {t.name for t in out.graph.initializer}
    float_of: dict[str, str] = {}
    nodes = []
    for node in out.graph.node:
        activation = node.op_type == "QuantizeLinear" and node.input[0] not in constants
        if activation and node.input[0] != keep:
            float_of[node.output[0]] = node.input[0]
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in float_of:
            float_of[node.output[0]] = float_of[node.input[0]]
            continue
        nodes.append(node)
    for node in nodes:
        node.input[:] = [float_of.get(name, name) for name in node.input]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def split_model(name: str, per_tensor: int, tmp: str) -> None:
    """Print one model's figures (module doc)."""
    from graphkit.data import load_input_spec
    from graphkit.evaluators.evaluate import agreement_details, evaluate, paired_difference
    from graphkit.model import load_model, save_model
    from graphkit.quant.qdq import insert_qdq
    from graphkit.quant.quantize import quantize

    path = assets() / "models" / f"{name}.onnx"
    model = load_model(path)
    spec = load_input_spec(ROOT / "examples" / "models" / f"{name}.yaml")
    fp32 = evaluate(str(path), spec, **val_args())

    def score(variant: onnx.ModelProto) -> tuple[dict, float]:
        file = Path(tmp) / f"{name}.onnx"
        save_model(variant, file)
        result = evaluate(str(file), spec, **val_args())
        return agreement_details(fp32, result), result["stats"]["AP"]

    plan = quantize(model, spec)
    qdq = insert_qdq(plan.deploy_model(model), plan)
    default, ap = score(qdq)
    floats, ap_f = score(without_activation_qdq(qdq))
    gain, half = paired_difference(default, floats)
    print(
        f"{name}: FP32 AP {fp32['stats']['AP']:.4f}; default AP {ap:.4f} agreement "
        f"{default['agreement']:.3f}; activations float AP {ap_f:.4f} agreement "
        f"{floats['agreement']:.3f} ({gain:+.4f} ±{half:.4f} paired)",
        flush=True,
    )
    finer = sorted(
        (2 * max(-e.min, e.max) / (e.max - e.min), t)
        for t, e in plan.activations.items()
        if e.min is not None and e.max is not None and e.min < 0 < e.max
    )
    if finer:
        print(
            f"{name}: {len(finer)} signed activations, an asymmetric grid finer by "
            f"{statistics.median(f for f, _ in finer):.2f}x (median), "
            f"over 1.3x for {sum(f > 1.3 for f, _ in finer)}: "
            + ", ".join(f"{t} {f:.2f}x" for f, t in finer if f > 1.3)
        )
    if not per_tensor:
        return
    constants = {t.name for t in qdq.graph.initializer}
    tensors = [
        n.input[0]
        for n in qdq.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in constants
    ]
    rows = []
    for tensor in tensors:
        alone, _ = score(without_activation_qdq(qdq, keep=tensor))
        rows.append((*paired_difference(floats, alone), tensor))
    rows.sort()
    total = sum(r[0] for r in rows)
    print(f"{name}: {len(rows)} activations alone int8, their costs summed {total:+.4f}")
    for cost, half, tensor in rows[:per_tensor]:
        entry = plan.activations.get(tensor)
        how = f" ({entry.method}, amax {entry.amax:.4g})" if entry else ""
        print(f"  {cost:+.4f} ±{half:.4f} {tensor}{how}", flush=True)
    worst = rows[0][2]
    readers = [c[1] for c in plan.activations[worst].consumers]
    extra = [r for r in readers if r not in plan.keep_float]
    wider = copy.deepcopy(plan)
    wider.keep_float = [*plan.keep_float, *extra]
    wider.weights = {k: w for k, w in plan.weights.items() if w.node not in extra}
    more, _ = score(insert_qdq(wider.deploy_model(model), wider))
    print(
        f"{name}: the default with the {len(extra)} int8 readers of {worst} float "
        f"too: agreement {more['agreement']:.3f} "
        "({:+.4f} ±{:.4f} paired)".format(*paired_difference(default, more)),
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    ap.add_argument("--per-tensor", type=int, default=0, metavar="N",
                    help="also rank the activations alone, print the N costliest")  # fmt: skip
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            split_model(name, args.per_tensor, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
