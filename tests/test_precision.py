"""train.precision: ``auto`` is fp32 on CPU, bf16 on a GPU with native bf16, fp16 on an older GPU."""
import pytest
import torch

from promptclip.config import build_config
from promptclip.devices import resolve_precision
from promptclip.engine.precision import autocast
from promptclip.errors import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def gpu(monkeypatch):
    """A mocked CUDA device of a given compute capability (no GPU needed)."""
    def make(major: int):
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    return make


def test_presets_default_to_auto_which_is_fp32_on_cpu():
    cfg = build_config(["vpt_deep_clip"], ["data.root=/tmp"])
    assert cfg.train.precision == "auto"
    assert resolve_precision(cfg.train.precision, CPU) == "fp32"


def test_auto_never_picks_bf16_on_cpu_even_beside_a_gpu(gpu):
    gpu(9)
    assert resolve_precision("auto", CPU) == "fp32"


@pytest.mark.parametrize("major, expected", [(8, "bf16"), (9, "bf16"), (7, "fp16"), (6, "fp16")])
def test_auto_on_a_gpu_is_bf16_where_native_else_fp16(gpu, major, expected):
    gpu(major)
    assert resolve_precision("auto", CUDA) == expected
    assert resolve_precision("auto", torch.device("cuda:1")) == expected


def test_auto_on_rocm_is_bf16(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert resolve_precision("auto", CUDA) == "bf16"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_explicit_precisions_are_kept(gpu, precision):
    gpu(7)
    assert resolve_precision(precision, CPU) == precision
    assert resolve_precision(precision, CUDA) == precision


def test_fp16_needs_a_gpu_and_unknown_values_are_refused():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_precision("fp8", CPU)


def test_autocast_computes_in_bf16_and_leaves_fp32_alone():
    weight = torch.randn(4, 4)
    with autocast(CPU, "fp32"):
        assert (torch.ones(2, 4) @ weight).dtype == torch.float32
    with autocast(CPU, "bf16"):
        assert (torch.ones(2, 4) @ weight).dtype == torch.bfloat16
    assert weight.dtype == torch.float32
