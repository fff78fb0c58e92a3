"""Shared fixtures: offline hub, a feature cache of the suite's own, a tiny random CLIP, the digits image folder."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing download fails at once instead of retrying
#: runs that set no output.cache_dir use a cache of this session's own, never the user's (~/.cache/promptclip)
os.environ["PROMPTCLIP_CACHE"] = tempfile.mkdtemp(prefix="promptclip-test-cache-")

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
