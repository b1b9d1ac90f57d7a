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
import onnx_ir as ir

from graphkit.irgraph import ancestors, name_of, reads, to_ir, to_proto
from graphkit.runtime.ort import make_session

Env = dict[str, np.ndarray]


class Segments:
    """`model` cut after each group of `targets` (groups in run order); `run(k, env)`
    computes part k from the tensors in `env` (graph inputs, earlier parts' tensors and
    any graph input the caller feeds), adds what later parts or the caller need, and
    drops what nothing reads any more."""

    def __init__(self, model: onnx.ModelProto, targets: Sequence[Sequence[str]]):
        self._model = to_ir(model)
        graph = self._model.graph
        values = ir.convenience.create_value_mapping(graph, include_subgraphs=False)
        position = {id(n): i for i, n in enumerate(graph)}
        done: set[int] = set()
        parts: list[list[ir.Node]] = []
        for group in targets:
            nodes = [n for n in ancestors(values[t] for t in group) if id(n) not in done]
            nodes.sort(key=lambda n: position[id(n)])  # graph order is topological
            done.update(id(n) for n in nodes)
            parts.append(nodes)
        self.parts = parts
        self.targets = [list(g) for g in targets]
        read = [
            {v.name for n in nodes for v in reads(n) if v.name and not v.is_initializer()}
            for nodes in parts
        ]
        made = [{o.name for n in nodes for o in n.outputs if o.name} for nodes in parts]
        self.inputs = [sorted(r - m) for r, m in zip(read, made)]
        # a tensor is kept after part k while a later part reads it
        self.outputs = []
        self.last_read: dict[str, int] = {}
        for k, r in enumerate(read):
            for t in r:
                self.last_read[t] = k
        for k, m in enumerate(made):
            later = set().union(*self.inputs[k + 1 :]) if k + 1 < len(parts) else set()
            self.outputs.append(sorted((m & later) | set(self.targets[k])))
        self._sessions: dict[int, object] = {}

    def _session(self, k: int, env: Mapping[str, np.ndarray]):
        if k not in self._sessions:
            part = ir.convenience.extract(
                self._model.graph, inputs=self.inputs[k], outputs=self.outputs[k]
            )
            part.name = f"part{k}"
            # dtype from the first arrays, shapes left free: samples may differ in size
            for v in part.inputs:
                v.type = ir.TensorType(ir.DataType.from_numpy(env[name_of(v)].dtype))
                v.shape = None
            for node in part:  # no stale shape hints inside either
                for v in node.outputs:
                    v.shape = None
            m = ir.Model(part, ir_version=self._model.ir_version)
            # every part's session stays alive: spinning idle threads of dozens of them
            # took the cores from the running one (movenet bias correction 2.0 -> 1.0 s)
            self._sessions[k] = make_session(to_proto(m), optimize=False, spin=False)
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
