"""specdec.transfer.upload: the values, dtype and device a caller asks for (CPU here; pinned staging on CUDA)."""
import numpy as np
import torch

from specdec.transfer import upload


def test_upload_keeps_values_and_converts_dtype():
    assert upload([3, 1, 2], "cpu", torch.long).tolist() == [3, 1, 2]
    assert upload([0.5, 1.0], torch.device("cpu"), torch.float32).dtype == torch.float32
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    t = upload(a, "cpu")
    assert t.dtype == torch.int64 and t.shape == (2, 3) and t.tolist() == a.tolist()
    assert upload(torch.tensor([1.5]), "cpu", torch.float64).dtype == torch.float64
    assert upload([], "cpu", torch.long).shape == (0,) and upload([], "cpu", torch.long).dtype == torch.long
