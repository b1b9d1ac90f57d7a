"""VastAI vacc: the vamc build YAML, the .npz calibration set and the snapped float model
(`export`)."""

from graphkit.backends.vacc.exporter import export

NAME = "vacc"

__all__ = ["NAME", "export"]
