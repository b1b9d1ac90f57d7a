"""Run a model part by part, keeping only the tensors later parts read.

Work that measures a tensor and then changes it before the rest of the network runs
(bias correction, depth by depth) would otherwise re-run the whole prefix for every
step: onnxruntime computes every node of a session. Here the graph is cut into parts,
part k being what the tensors `targets[k]` need beyond the earlier parts; each part is
its own session whose inputs are the earlier tensors it reads. Running every part once
costs one forward pass, whatever happens between the parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from graphkit.graph import ancestors, node_inputs
from graphkit.runtime.ort import make_session

Env = dict[str, np.ndarray]


class Segments:
    """`model` cut after each group of `targets` (groups in run order); `run(k, env)`
    computes part k from the tensors in `env` (graph inputs, earlier parts' tensors and
    any graph input the caller feeds), adds what later parts or the caller need, and
    drops what nothing reads any more."""

    def __init__(self, model: onnx.ModelProto, targets: Sequence[Sequence[str]]):
        graph = model.graph
        self._model = model
        self._inits = {i.name: i for i in graph.initializer}
        done: set[int] = set()
        self.parts: list[list[int]] = []
        for group in targets:
            nodes = sorted(ancestors(graph, group) - done)  # graph order is topological
            done.update(nodes)
            self.parts.append(nodes)
        self.targets = [list(g) for g in targets]
        reads = [
            {t for i in nodes for t in node_inputs(graph.node[i]) if t not in self._inits}
            for nodes in self.parts
        ]
        made = [{t for i in nodes for t in graph.node[i].output if t} for nodes in self.parts]
        self.inputs = [sorted(r - m) for r, m in zip(reads, made)]
        # a tensor is kept after part k while a later part reads it
        self.outputs = []
        self.last_read: dict[str, int] = {}
        for k, r in enumerate(reads):
            for t in r:
                self.last_read[t] = k
        for k, m in enumerate(made):
            later = set().union(*self.inputs[k + 1 :]) if k + 1 < len(self.parts) else set()
            self.outputs.append(sorted((m & later) | set(self.targets[k])))
        self._sessions: dict[int, object] = {}

    def _session(self, k: int, env: Mapping[str, np.ndarray]):
        if k not in self._sessions:
            g = self._model.graph
            nodes = [g.node[i] for i in self.parts[k]]
            needed = {t for n in nodes for t in node_inputs(n)}
            part = helper.make_graph(
                nodes,
                f"part{k}",
                [  # dtype from the first arrays, shape left free: samples may differ in size
                    helper.make_tensor_value_info(
                        t, helper.np_dtype_to_tensor_dtype(env[t].dtype), None
                    )
                    for t in self.inputs[k]
                ],
                [helper.make_empty_tensor_value_info(t) for t in self.outputs[k]],
                [self._inits[t] for t in sorted(needed & set(self._inits))],
            )
            m = helper.make_model(
                part, opset_imports=self._model.opset_import, ir_version=self._model.ir_version
            )
            self._sessions[k] = make_session(m, optimize=False)
        return self._sessions[k]

    def run(self, k: int, env: Env) -> Env:
        """Part k on `env` (updated in place and returned)."""
        if not self.parts[k]:
            return env
        sess = self._session(k, env)
        values = sess.run(self.outputs[k], {t: env[t] for t in self.inputs[k]})
        env.update(zip(self.outputs[k], values))
        for t in self.inputs[k]:
            if self.last_read.get(t, -1) <= k and t not in self.targets[k]:
                env.pop(t, None)
        return env


__all__ = ["Segments"]
