"""Build the optional compiled histogram kernel; everything else is in pyproject.toml.

`optional=True`: where no C compiler is available the install still succeeds and
graphkit falls back to numpy (same results, slower calibration)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "graphkit.quant._histogram",
            ["graphkit/quant/_histogram.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
