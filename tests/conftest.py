"""Shared fixtures: offline hub, a tiny random CLIP, the digits image folder."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing download fails at once instead of retrying

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny():
    from promptclip.backbone import FrozenCLIP

    return FrozenCLIP.load("tiny-vit")


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """scikit-learn's digits written as train/test class folders (32×32 RGB PNGs)."""
    from promptclip.demo import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"))
