"""Triton entry point of the `draft` model; the logic lives in specdec/triton/draft.py."""
from specdec.triton.draft import DraftModel as TritonPythonModel  # noqa: F401
