"""Triton entry point of the `preprocessing` model; the logic lives in specdec/triton/preprocessing.py."""
from specdec.triton.preprocessing import PreprocessingModel as TritonPythonModel  # noqa: F401
