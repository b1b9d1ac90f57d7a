"""Input data for calibrate, diff, eval and the exporters: a YAML spec, streamed samples.

    spec = load_input_spec("examples/models/efficientpose.yaml")
    check_against_model(spec, model)
    for sample in iter_samples(spec):          # one image decoded at a time
        outputs = run(model, sample.feeds)     # sample.meta maps results back to the image

See docs/data.md for every key of the spec.
"""

from graphkit.data.affine import apply_affine, get_affine, invert_affine
from graphkit.data.check import check_against_model
from graphkit.data.samples import Sample, count_samples, iter_samples, prefetched
from graphkit.data.spec import InputConfig, InputSpec, SourceConfig, load_input_spec, shard

__all__ = [
    "InputConfig",
    "InputSpec",
    "Sample",
    "SourceConfig",
    "apply_affine",
    "check_against_model",
    "count_samples",
    "get_affine",
    "invert_affine",
    "iter_samples",
    "load_input_spec",
    "prefetched",
    "shard",
]
