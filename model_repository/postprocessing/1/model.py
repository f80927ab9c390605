"""Triton entry point of the `postprocessing` model; the logic lives in specdec/triton/postprocessing.py."""
from specdec.triton.postprocessing import PostprocessingModel as TritonPythonModel  # noqa: F401
