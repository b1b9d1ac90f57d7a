"""YAML pipelines of passes, run one after another with a check after each.

A pipeline file is either a list of steps or a mapping with `passes:` and options:

    fixed_point: true        # repeat the whole list until no pass changes the model
    max_iterations: 5
    passes:
      - cleanup
      - fix-shapes: {input: [1, 3, 256, 256]}

After each pass the model must pass the onnx checker and shape inference, and (unless
verification is off) give the same outputs in onnxruntime as the model before the pass, on
random inputs of the right dtype and shape (int32 images get 0..255). Every output is
compared (max abs difference per output, allowed 1e-4 + 1e-3 * max|output|); a pass that
renames inputs/outputs or changes them on purpose says which old tensor each new one must
equal. A pass that fails is rolled back and the run stops with one sentence naming the
pass, the output and the difference. Each step reports nodes before/after, what the pass
did, ops removed/added, its time and the per-output differences.
"""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from pydantic import BaseModel, PositiveInt

from graphkit.errors import GraphkitError, InputError, ModelError, VerificationError
from graphkit.irgraph import skeleton, to_ir, to_proto
from graphkit.passes.base import PassInfo, count_ops, get_pass, validate_options
from graphkit.runtime import ort as ort_rt
from graphkit.validation import STRICT, read_yaml, validate


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


log = logging.getLogger(__name__)
VERIFY_INPUTS = 2  # random inputs each pass is checked on


@dataclass
class Tolerance:
    """What a pass may change an output by: per element, atol + rtol x the largest finite
    |value| of that element's channel (axis 1; the whole tensor below 2 dims). Scaling by
    the whole output let a channel that never exceeds 0.69 move by 39,000 when another
    channel reached 4e7; NaN and inf values do not set the scale."""

    atol: float = 1e-4
    rtol: float = 1e-3

    def allowed(self, ref: np.ndarray) -> np.ndarray | float:
        if not ref.size or ref.dtype.kind != "f":
            return self.atol
        mag = np.abs(ref.astype(np.float64))
        mag[~np.isfinite(mag)] = 0.0
        if ref.ndim < 2:
            return self.atol + self.rtol * float(mag.max())
        axes = tuple(i for i in range(ref.ndim) if i != 1)
        return self.atol + self.rtol * mag.max(axis=axes, keepdims=True)


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
    verify_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _PipelineFile(BaseModel):
    """The mapping form of a pipeline file (the list form is its `passes` alone)."""

    model_config = STRICT

    passes: list[Any] | None = None  # each step is checked below, with its pass
    fixed_point: bool = False
    max_iterations: PositiveInt = 10


def parse_pipeline(data: Any, source: str = "pipeline") -> Pipeline:
    """Build a Pipeline from already-parsed YAML, validating pass names and options."""
    fixed_point, max_iter = False, 10
    if isinstance(data, dict):
        head: _PipelineFile = validate(_PipelineFile, data, source)
        fixed_point, max_iter, data = head.fixed_point, head.max_iterations, head.passes
    if not isinstance(data, list) or not data:
        raise InputError(f"{source} must be a non-empty list of passes")
    steps = []
    for i, item in enumerate(data, 1):
        if isinstance(item, str):
            name, options = item, dict[str, Any]()
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
            if options is None:
                options = {}
            if not isinstance(options, dict):
                raise InputError(
                    f"{source}: options of step {i} ('{name}') must be a mapping, "
                    f"got {type(options).__name__}"
                )
        else:
            raise InputError(
                f"{source}: step {i} must be a pass name or '- name: {{option: value}}'"
            )
        info = get_pass(str(name))
        steps.append(Step(info.name, validate_options(info, options)))
    return Pipeline(steps, fixed_point, max_iter)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read a pipeline YAML file."""
    data = read_yaml(path, "pipeline file")
    return parse_pipeline(data, str(path))


def check_model(model: onnx.ModelProto | ir.Model, who: str) -> None:
    """onnx checker + shape inference, on a copy without the big weights."""
    light = skeleton(model if isinstance(model, ir.Model) else to_ir(model))
    try:
        onnx.checker.check_model(light, full_check=True)  # full_check = + shape inference
    except Exception as exc:  # noqa: BLE001 - checker and inference raise many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphkitError(f"{who} produced an invalid model: {first}") from None


def _feeds_for(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    base_feeds: dict[str, np.ndarray],
    input_map: dict[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inputs for both models.

    Renamed inputs (input_map) get the old input's data; inputs that only `after` has
    (e.g. after extract) are computed by running `before` up to those tensors.
    """
    input_map = input_map or {}
    after_inputs = ort_rt.graph_input_names(after)
    feeds_after = {}
    missing = []
    for n in after_inputs:
        src = input_map.get(n, n)
        if src in base_feeds:
            feeds_after[n] = base_feeds[src]
        else:
            missing.append(n)
    if missing:
        feeds_after.update(ort_rt.run(before, base_feeds, outputs=missing))
    return base_feeds, feeds_after


def sample_feeds(
    before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 0
) -> dict[str, np.ndarray]:
    """Sample inputs for `before`, shaped like `after`'s inputs where those are static.

    A pass may fix a dynamic dim (fix-shapes); the new model only accepts the new size and
    the old one accepts it too, so both run on the same data.
    """
    feeds = ort_rt.sample_inputs(before, seed=seed)
    after_shapes = {vi.name: ort_rt.input_shape(vi, dynamic=0) for vi in after.graph.input}
    rng = np.random.default_rng(seed + 1)
    for name, arr in list(feeds.items()):
        shape = after_shapes.get(name)
        if shape is None or len(shape) != arr.ndim or list(arr.shape) == shape:
            continue
        if 0 in shape:
            continue
        if np.issubdtype(arr.dtype, np.integer):
            feeds[name] = rng.integers(0, 256, size=shape).astype(arr.dtype)
        elif arr.dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[name] = rng.standard_normal(shape).astype(arr.dtype)
    return feeds


class OutputCache:
    """The last model's outputs on each verification input: each verified pass then runs
    only the new model (the previous pass's result was run on the same inputs)."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[onnx.ModelProto, dict, dict]] = {}

    def get(
        self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str], slot: int = 0
    ) -> dict[str, np.ndarray] | None:
        if slot not in self.entries:
            return None
        cached_model, cached_feeds, values = self.entries[slot]
        if model is not cached_model or set(feeds) != set(cached_feeds):
            return None
        if not all(np.array_equal(feeds[k], cached_feeds[k]) for k in feeds):
            return None
        if not all(n in values for n in names):
            return None
        return values

    def put(
        self,
        model: onnx.ModelProto,
        feeds: dict[str, np.ndarray],
        values: dict[str, np.ndarray],
        slot: int = 0,
    ) -> None:
        self.entries[slot] = (model, dict(feeds), dict(values))


def _run(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    names: list[str],
    cache: OutputCache | None,
    slot: int = 0,
) -> dict[str, np.ndarray]:
    hit = cache.get(model, feeds, names, slot) if cache else None
    if hit is not None:
        return hit
    graph_outputs = [o.name for o in model.graph.output]
    if set(names) <= set(graph_outputs):
        values = ort_rt.run(model, feeds)  # plain session: no shape inference, optimized
    else:
        values = ort_rt.run(model, feeds, outputs=names)
    if cache is not None:
        cache.put(model, feeds, values, slot)
    return values


def compare(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    output_map: dict[str, str] | None,
    feeds: dict[str, np.ndarray],
    input_map: dict[str, str] | None = None,
    tolerance: Tolerance | None = None,
    cache: OutputCache | None = None,
    slot: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """Per output of `after`: (max |diff|, |diff| and allowed at the element furthest
    over its allowance)."""
    mapping = output_map or {o.name: o.name for o in after.graph.output}
    feeds_before, feeds_after = _feeds_for(before, after, feeds, input_map)
    old = _run(before, feeds_before, list(dict.fromkeys(mapping.values())), cache, slot)
    new = _run(after, feeds_after, list(mapping), cache, slot)
    tol = tolerance or Tolerance()
    result = {}
    for new_name, old_name in mapping.items():
        a, b = old[old_name], new[new_name]
        if a.shape != b.shape:
            raise VerificationError(
                f"output '{new_name}' changed shape from {list(a.shape)} to {list(b.shape)}"
            )
        if a.dtype != b.dtype:
            raise VerificationError(f"output '{new_name}' changed type from {a.dtype} to {b.dtype}")
        result[new_name] = (max_abs_diff(a, b), *worst_excess(a, b, tol))
    return result


def worst_excess(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> tuple[float, float]:
    """(|a - b|, allowed) at the element furthest over its allowance (or closest to it);
    (inf, allowed) when NaNs or infinities do not line up."""
    if not a.size or a.dtype.kind not in "fc":
        return max_abs_diff(a, b), tol.atol
    if max_abs_diff(a, b) == float("inf"):
        return float("inf"), float(np.max(tol.allowed(a)))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    diff = np.zeros(a.shape)
    diff[finite] = np.abs(a64[finite] - b64[finite])
    allowed = np.broadcast_to(tol.allowed(a), a.shape)
    k = int(np.argmax(diff / allowed))
    return float(diff.flat[k]), float(allowed.flat[k])


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest elementwise |a - b|; inf where NaNs or infinities do not line up."""
    if not a.size:
        return 0.0
    if a.dtype.kind in "fc":
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.array_equal(np.isnan(a64), np.isnan(b64)):
            return float("inf")
        finite = np.isfinite(a64) & np.isfinite(b64)
        if not np.array_equal(a64[~finite & ~np.isnan(a64)], b64[~finite & ~np.isnan(a64)]):
            return float("inf")
        return float(np.max(np.abs(a64[finite] - b64[finite]), initial=0.0))
    if a.dtype == np.bool_:
        return float(np.any(a != b))
    return float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))


ProgressFn = Callable[[StepReport], None]


@typing.overload
def run_pipeline(
    model: onnx.ModelProto,
    pipeline: Pipeline,
    verify: bool = ...,
    on_step: ProgressFn | None = ...,
    seed: int = ...,
    verify_shapes: dict[str, list[int]] | None = ...,
) -> tuple[onnx.ModelProto, list[StepReport]]: ...


@typing.overload
def run_pipeline(
    model: ir.Model,
    pipeline: Pipeline,
    verify: bool = ...,
    on_step: ProgressFn | None = ...,
    seed: int = ...,
    verify_shapes: dict[str, list[int]] | None = ...,
) -> tuple[ir.Model, list[StepReport]]: ...


def run_pipeline(
    model: onnx.ModelProto | ir.Model,
    pipeline: Pipeline,
    verify: bool = True,
    on_step: ProgressFn | None = None,
    seed: int = 0,
    verify_shapes: dict[str, list[int]] | None = None,
) -> tuple[onnx.ModelProto | ir.Model, list[StepReport]]:
    """Apply every step; verify each; stop at the first failure (the model is unchanged).

    `model` is a protobuf or an onnx_ir model (what torch.onnx and onnxscript give); the
    result is of the same kind. Verification inputs have `verify_shapes` (from
    `runtime.ort.runnable_shapes`; chosen here the same way when None): free dims at a
    size the model runs at."""
    if isinstance(model, ir.Model):
        result, reports = run_pipeline(
            to_proto(model), pipeline, verify, on_step, seed, verify_shapes
        )
        return to_ir(result), reports
    if verify:
        try:  # say so once, not as the first pass's failure
            ort_rt.make_session(model)
        except ModelError as exc:
            raise ModelError(
                f"{exc}; the passes cannot be verified on it (--no-verify applies them unchecked)"
            ) from None
    if verify and verify_shapes is None:
        verify_shapes, _ = ort_rt.runnable_shapes(model)
    with ort_rt.sample_shapes(verify_shapes if verify else None):
        if verify:
            return _run_steps(model, pipeline, verify, on_step, seed)
        # unverified: one IR edited in place and checked once at the end; a failure is
        # then traced to its pass by running again with a check after every pass
        try:
            return _run_steps(model, pipeline, False, on_step, seed, check=False)
        except GraphkitError:
            return _run_steps(model, pipeline, False, None, seed, check=True)


class _Model:
    """One state of the model as the pipeline sees it: the IR passes edit, and the protobuf
    the checker and onnxruntime take, each made from the other only when first asked."""

    def __init__(self, proto: onnx.ModelProto | None = None, graph: ir.Model | None = None):
        self._proto, self._ir = proto, graph

    @property
    def proto(self) -> onnx.ModelProto:
        if self._proto is None:
            assert self._ir is not None
            self._proto = to_proto(self._ir)
        return self._proto

    def editable(self, copy: bool) -> ir.Model:
        """The IR; with copy, one the caller may edit without touching this state."""
        if self._ir is None or copy:
            return to_ir(self.proto)
        self._proto = None  # the caller edits it in place: the protobuf goes stale
        return self._ir

    def keep(self, unchanged: ir.Model) -> None:
        """Adopt the IR a pass left unchanged, so the next pass needs no conversion."""
        if self._ir is None:
            self._ir = unchanged

    @property
    def latest(self) -> onnx.ModelProto | ir.Model:
        """Whichever form exists (the IR when both do: it is what the pass returned)."""
        return self._ir if self._ir is not None else self.proto

    def count_ops(self) -> dict[str, int]:
        return count_ops(self._ir if self._ir is not None else self.proto)


def _run_steps(
    model, pipeline, verify, on_step, seed, check=True
) -> tuple[onnx.ModelProto, list[StepReport]]:
    reports: list[StepReport] = []
    current = _Model(model)
    cache = OutputCache()
    iterations = pipeline.max_iterations if pipeline.fixed_point else 1
    for iteration in range(1, iterations + 1):
        any_change = False
        for step in pipeline.steps:
            # without verification nothing needs the state before a pass, so after the
            # first step (the caller's model is never edited) passes edit one IR in place
            inplace = not verify and iteration + len(reports) > 1
            report, current = run_step(
                current, step, verify, iteration, seed, cache, inplace, check
            )
            reports.append(report)
            any_change |= report.changed
            log.info(
                "%s: %d -> %d nodes in %.2fs%s",
                report.name,
                report.nodes_before,
                report.nodes_after,
                report.seconds,
                "" if report.max_abs_diff is None else f", max |diff| {report.max_abs_diff}",
            )
            if on_step:
                on_step(report)
        if not any_change:
            break
    if not check:
        check_model(current.latest, "the pipeline")
    return current.proto, reports


def run_step(
    model: _Model,
    step: Step,
    verify: bool,
    iteration: int = 1,
    seed: int = 0,
    cache: OutputCache | None = None,
    inplace: bool = False,
    check: bool = True,
) -> tuple[StepReport, _Model]:
    """Run one pass and verify it; raise GraphkitError (model untouched) if it is wrong."""
    info = step.info
    before_ops = model.count_ops()
    nodes_before = sum(before_ops.values())
    # verification compares against the state before the pass: make its protobuf first
    before = model.proto if verify else None
    start = time.perf_counter()
    work = model.editable(copy=not inplace)
    try:
        result = info.func(work, **step.options)
    except GraphkitError as exc:
        raise GraphkitError(f"pass '{step.name}' failed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a pass bug must not leave a traceback or a file
        msg = (str(exc).strip().splitlines() or [""])[0]
        raise VerificationError(
            f"pass '{step.name}' crashed ({type(exc).__name__}: {msg}); the model was left "
            "unchanged, please report this"
        ) from None
    # an unchanged model stays the same object (keeps the verification cache warm)
    changed = result.changed or info.changes_outputs
    new = _Model(graph=result.model) if (changed or inplace) else model
    if new is model:
        model.keep(work)
    if result.changed and check:
        try:
            check_model(new.latest, f"pass '{step.name}'")
        except GraphkitError as exc:
            raise VerificationError(f"{exc}; it was rolled back") from None
    seconds = time.perf_counter() - start
    diffs: dict[str, float] | None = None
    verify_start = time.perf_counter()
    if verify and changed:
        assert before is not None
        diffs = {}
        for slot in range(VERIFY_INPUTS):
            feeds = sample_feeds(before, new.proto, seed=seed + 1000 * slot)
            try:
                measured = compare(
                    before,
                    new.proto,
                    result.output_map,
                    feeds,
                    result.input_map,
                    cache=cache,
                    slot=slot,
                )
            except GraphkitError as exc:
                raise VerificationError(f"pass '{step.name}' was rolled back: {exc}") from None
            for out, (largest, diff, allowed) in measured.items():
                if not diff <= allowed:
                    raise VerificationError(
                        f"pass '{step.name}' changed output '{out}' by {diff:.3g} where "
                        f"{allowed:.3g} is allowed (tolerance per channel); it was rolled back"
                    )
                diffs[out] = max(diffs.get(out, 0.0), largest)
    verify_seconds = time.perf_counter() - verify_start
    after_ops = new.count_ops()
    removed = {k: v - after_ops.get(k, 0) for k, v in before_ops.items() if v > after_ops.get(k, 0)}
    added = {k: v - before_ops.get(k, 0) for k, v in after_ops.items() if v > before_ops.get(k, 0)}
    report = StepReport(
        name=step.name,
        iteration=iteration,
        nodes_before=nodes_before,
        nodes_after=sum(after_ops.values()),
        seconds=seconds,
        changed=result.changed,
        notes=result.notes,
        max_abs_diff=diffs,
        ops_removed=removed,
        ops_added=added,
        verify_seconds=verify_seconds if diffs is not None else 0.0,
    )
    return report, new
