"""Triton entry point of the `target` model; the logic lives in specdec/triton/target.py."""
from specdec.triton.target import TargetModel as TritonPythonModel  # noqa: F401
