"""rename: tensor and node names that every backend accepts."""

from __future__ import annotations

import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import Names, all_graphs, all_values, name_of, plural
from graphkit.passes.base import PassResult, register


def _clean(name: str, bad: str, replacement: str) -> str:
    return "".join(replacement if c in bad else c for c in name)


@register("rename")
def rename(
    model: ir.Model,
    *,
    chars: str = ":/",
    replacement: str = "_",
    keep_io: bool = True,
    nodes: bool = True,
) -> PassResult:
    """Make tensor and node names safe for backends that reject ':' or '/', and unique.

    Replaces the characters in `chars` (by default ':' and '/') in tensor and node names.

    Our own pass (a plain rename; no library needed). `replacement` is what replaces each
    bad character; a name that would collide with another gets a _1, _2... suffix. With
    `keep_io: true` (the default) graph input and output names stay as they are, so
    calibration configs and decoders that use them keep working; set it to false when
    the backend rejects them too (the report then maps new output names to old ones).
    `nodes` also cleans node names and makes them unique.
    """
    if any(c in replacement for c in chars):
        raise GraphkitError(f"replacement '{replacement}' contains a character it should replace")
    g = model.graph
    io = {id(v) for v in list(g.inputs) + list(g.outputs)}
    names = Names(g)
    mapping: dict[str, str] = {}
    for value in dict.fromkeys(all_values(g)):  # a value may be listed twice (input + init)
        name = value.name
        if not name or (keep_io and id(value) in io):
            continue
        new = _clean(name, chars, replacement)
        if new == name:
            continue
        new = names.fresh(new)
        mapping[name] = new
        value.name = new
    io_names = {id(v): v.name for v in list(g.inputs) + list(g.outputs)}
    renamed_nodes = 0
    if nodes:
        seen = Names()
        for graph in all_graphs(g):
            for node in graph:
                hint = (
                    _clean(node.name or "", chars, replacement)
                    or f"{node.op_type}_{len(seen.taken)}"
                )
                new = seen.fresh(hint)
                if new != node.name:
                    node.name = new
                    renamed_nodes += 1
    notes = []
    if mapping:
        notes.append(f"renamed {plural(len(mapping), 'tensor')}")
    if renamed_nodes:
        notes.append(f"renamed {plural(renamed_nodes, 'node')}")
    result = PassResult(model, bool(notes), notes)
    reverse = {new: old for old, new in mapping.items()}
    if any(name in reverse for name in io_names.values()):
        result.output_map = {name_of(o): reverse.get(name_of(o), name_of(o)) for o in g.outputs}
        result.input_map = {
            name_of(i): reverse[name_of(i)] for i in g.inputs if name_of(i) in reverse
        }
    return result
