"""The exceptions a user can meet: GraphkitError and the kinds under it.

The CLI prints the message as a single sentence and exits with code 2, whatever the kind;
anything else that escapes is a bug in graphkit, not in the user's input. A library user
catches GraphkitError, or one kind to react to it:

- InputError: a file or option the user gave is wrong (input spec, plan, pipeline, pass
  option, output path);
- ModelError: the model cannot be read, run or is not the one a plan was made for;
- VerificationError: a pass changed what the model computes and was rolled back;
- BackendError: a backend tool (pnnx, ncnn, onnxruntime) failed on a valid input.
"""


class GraphkitError(Exception):
    """A user-facing error: the message is one clear sentence saying what to fix."""


class InputError(GraphkitError):
    """A file or option the user handed in is wrong; the message names it."""


class ModelError(GraphkitError):
    """The model cannot be read or run, or a plan was made for another model."""


class VerificationError(GraphkitError):
    """A pass changed the model's outputs (or broke it) and was rolled back."""


class BackendError(GraphkitError):
    """A backend tool failed on an input graphkit considers valid."""


__all__ = ["BackendError", "GraphkitError", "InputError", "ModelError", "VerificationError"]
