"""YAML pipelines of passes, run one after another with a check after each.

A pipeline file is either a list of steps or a mapping with `passes:` and options:

    fixed_point: true        # repeat the whole list until no pass changes the model
    max_iterations: 5
    passes:
      - cleanup
      - fix-shapes: {input: [1, 3, 256, 256]}

After each pass the model must pass the onnx checker and shape inference, and (unless
verification is off) give the same outputs in onnxruntime as the model before the pass, on
random inputs of the right dtype and shape. A pass that fails is rolled back and the run
stops with one sentence naming the pass, the output and the difference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import yaml

from graphkit.errors import GraphkitError
from graphkit.passes.base import PassInfo, count_ops, get_pass, validate_options
from graphkit.runtime import ort as ort_rt


@dataclass
class Step:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> PassInfo:
        return get_pass(self.name)


@dataclass
class Pipeline:
    steps: list[Step]
    fixed_point: bool = False
    max_iterations: int = 10


@dataclass
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-3

    def allowed(self, ref: np.ndarray) -> float:
        scale = float(np.max(np.abs(ref))) if ref.size and ref.dtype.kind == "f" else 0.0
        return self.atol + self.rtol * scale


@dataclass
class StepReport:
    name: str
    iteration: int
    nodes_before: int
    nodes_after: int
    seconds: float
    changed: bool
    notes: list[str]
    max_abs_diff: dict[str, float] | None  # per output; None when not verified
    ops_removed: dict[str, int] = field(default_factory=dict)
    ops_added: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_pipeline(data: Any, source: str = "pipeline") -> Pipeline:
    """Build a Pipeline from already-parsed YAML, validating pass names and options."""
    fixed_point, max_iter = False, 10
    if isinstance(data, dict):
        unknown = set(data) - {"passes", "fixed_point", "max_iterations"}
        if unknown:
            raise GraphkitError(
                f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
                "expected passes, fixed_point, max_iterations"
            )
        fixed_point = bool(data.get("fixed_point", False))
        max_iter = data.get("max_iterations", 10)
        if not isinstance(max_iter, int) or max_iter < 1:
            raise GraphkitError(f"{source}: max_iterations must be a positive integer")
        data = data.get("passes")
    if not isinstance(data, list) or not data:
        raise GraphkitError(f"{source} must be a non-empty list of passes")
    steps = []
    for i, item in enumerate(data, 1):
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
            if options is None:
                options = {}
            if not isinstance(options, dict):
                raise GraphkitError(
                    f"{source}: options of step {i} ('{name}') must be a mapping, "
                    f"got {type(options).__name__}"
                )
        else:
            raise GraphkitError(
                f"{source}: step {i} must be a pass name or '- name: {{option: value}}'"
            )
        info = get_pass(str(name))
        steps.append(Step(info.name, validate_options(info, options)))
    return Pipeline(steps, fixed_point, max_iter)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read a pipeline YAML file."""
    p = Path(path)
    if not p.exists():
        raise GraphkitError(f"pipeline file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise GraphkitError(f"pipeline file {p} is not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise GraphkitError(f"pipeline file {p} is not a text file") from None
    return parse_pipeline(data, str(p))


def check_model(model: onnx.ModelProto, who: str) -> onnx.ModelProto:
    """onnx checker + shape inference; returns the model with inferred shapes."""
    try:
        if model.ByteSize() < ort_rt.EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(model)
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphkitError(f"{who} produced an invalid model: {first}") from None
    return inferred


def _feeds_for(
    before: onnx.ModelProto, after: onnx.ModelProto, base_feeds: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inputs for both models; new inputs of `after` (e.g. after extract) come from `before`."""
    after_inputs = ort_rt.graph_input_names(after)
    missing = [n for n in after_inputs if n not in base_feeds]
    feeds_after = {n: base_feeds[n] for n in after_inputs if n in base_feeds}
    if missing:
        feeds_after.update(ort_rt.run(before, base_feeds, outputs=missing))
    return base_feeds, feeds_after


def compare(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    output_map: dict[str, str] | None,
    feeds: dict[str, np.ndarray],
) -> dict[str, tuple[float, float]]:
    """Max abs difference (and the allowed one) per output of `after`."""
    mapping = output_map or {o.name: o.name for o in after.graph.output}
    feeds_before, feeds_after = _feeds_for(before, after, feeds)
    old = ort_rt.run(before, feeds_before, outputs=list(dict.fromkeys(mapping.values())))
    new = ort_rt.run(after, feeds_after, outputs=list(mapping))
    tol = Tolerance()
    result = {}
    for new_name, old_name in mapping.items():
        a, b = old[old_name], new[new_name]
        if a.shape != b.shape:
            raise GraphkitError(
                f"output '{new_name}' changed shape from {list(a.shape)} to {list(b.shape)}"
            )
        if a.dtype.kind in "fc":
            diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
            if np.isnan(a).any() != np.isnan(b).any():
                diff = float("inf")
        else:
            diff = float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))) if a.size else 0.0
        result[new_name] = (diff, tol.allowed(a))
    return result


ProgressFn = Callable[[StepReport], None]


def run_pipeline(
    model: onnx.ModelProto,
    pipeline: Pipeline,
    verify: bool = True,
    on_step: ProgressFn | None = None,
    seed: int = 0,
) -> tuple[onnx.ModelProto, list[StepReport]]:
    """Apply every step; verify each; stop at the first failure (the model is unchanged)."""
    reports: list[StepReport] = []
    current = model
    iterations = pipeline.max_iterations if pipeline.fixed_point else 1
    for iteration in range(1, iterations + 1):
        any_change = False
        for step in pipeline.steps:
            report, current = run_step(current, step, verify, iteration, seed)
            reports.append(report)
            any_change |= report.changed
            if on_step:
                on_step(report)
        if not any_change:
            break
    return current, reports


def run_step(
    model: onnx.ModelProto, step: Step, verify: bool, iteration: int = 1, seed: int = 0
) -> tuple[StepReport, onnx.ModelProto]:
    """Run one pass and verify it; raise GraphkitError (model untouched) if it is wrong."""
    info = step.info
    before_ops = count_ops(model)
    start = time.perf_counter()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    try:
        result = info.func(work, **step.options)
    except GraphkitError as exc:
        raise GraphkitError(f"pass '{step.name}' failed: {exc}") from None
    seconds = time.perf_counter() - start
    new = result.model
    check_model(new, f"pass '{step.name}'")
    diffs = None
    if verify and (result.changed or info.changes_outputs):
        feeds = ort_rt.sample_inputs(model, seed=seed)
        measured = compare(model, new, result.output_map, feeds)
        for out, (diff, allowed) in measured.items():
            if not diff <= allowed:
                raise GraphkitError(
                    f"pass '{step.name}' changed output '{out}' by up to {diff:.3g} "
                    f"(allowed {allowed:.3g}); it was rolled back"
                )
        diffs = {k: v[0] for k, v in measured.items()}
    after_ops = count_ops(new)
    removed = {k: v - after_ops.get(k, 0) for k, v in before_ops.items() if v > after_ops.get(k, 0)}
    added = {k: v - before_ops.get(k, 0) for k, v in after_ops.items() if v > before_ops.get(k, 0)}
    report = StepReport(
        name=step.name,
        iteration=iteration,
        nodes_before=len(model.graph.node),
        nodes_after=len(new.graph.node),
        seconds=seconds,
        changed=result.changed,
        notes=result.notes,
        max_abs_diff=diffs,
        ops_removed=removed,
        ops_added=added,
    )
    return report, new
