"""rename: tensor and node names that every backend accepts."""

from __future__ import annotations

import onnx

from graphkit.errors import GraphkitError
from graphkit.graph import plural, subgraphs, unique_name
from graphkit.passes.base import PassResult, register


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from _all_graphs(sub)


def _tensor_names(graph: onnx.GraphProto) -> list[str]:
    names: dict[str, None] = {}
    for g in _all_graphs(graph):
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            names[vi.name] = None
        for init in g.initializer:
            names[init.name] = None
        for node in g.node:
            for n in list(node.input) + list(node.output):
                if n:
                    names[n] = None
    return list(names)


def _clean(name: str, bad: str, replacement: str) -> str:
    return "".join(replacement if c in bad else c for c in name)


@register("rename")
def rename(
    model: onnx.ModelProto,
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
    io = {vi.name for vi in g.input} | {vi.name for vi in g.output}
    names = _tensor_names(g)
    taken = set(names)
    mapping: dict[str, str] = {}
    for name in names:
        if keep_io and name in io:
            continue
        new = _clean(name, chars, replacement)
        if new == name:
            continue
        base, i = new, 1
        while new in taken:
            new = f"{base}_{i}"
            i += 1
        taken.add(new)
        mapping[name] = new
    for graph in _all_graphs(g):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            vi.name = mapping.get(vi.name, vi.name)
        for init in graph.initializer:
            init.name = mapping.get(init.name, init.name)
        for node in graph.node:
            for i, n in enumerate(node.input):
                node.input[i] = mapping.get(n, n)
            for i, n in enumerate(node.output):
                node.output[i] = mapping.get(n, n)
    renamed_nodes = 0
    if nodes:
        seen: set[str] = set()
        for graph in _all_graphs(g):
            for node in graph.node:
                hint = _clean(node.name, chars, replacement) or f"{node.op_type}_{len(seen)}"
                new = unique_name(hint, seen)
                if new != node.name:
                    node.name = new
                    renamed_nodes += 1
    notes = []
    if mapping:
        notes.append(f"renamed {plural(len(mapping), 'tensor')}")
    if renamed_nodes:
        notes.append(f"renamed {plural(renamed_nodes, 'node')}")
    result = PassResult(model, bool(notes), notes)
    if any(name in mapping for name in io):
        reverse = {new: old for old, new in mapping.items()}
        result.output_map = {o.name: reverse.get(o.name, o.name) for o in g.output}
        result.input_map = {i.name: reverse[i.name] for i in g.input if i.name in reverse}
    return result
