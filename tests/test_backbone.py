"""The frozen backbone's hooks against open_clip's own forward passes and hand-built expectations."""
from pathlib import Path

import pytest
import torch

from promptclip.backbone import FrozenCLIP, VisionPrompts, _is_standard_block, _run_block
from promptclip.errors import BackboneError


def record_block_inputs(blocks):
    """Forward pre-hooks that keep each block's input sequence (what its first op, ``ln_1``, receives)."""
    seen = {}
    handles = [b.ln_1.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach().clone()))
               for i, b in enumerate(blocks)]
    return seen, handles


def test_truncated_text_equals_full_length_and_open_clip(tiny):
    ids = tiny.tokenize(["a photo of a dog.", "cat", "a very much longer prompt about a sea lion on a rock."])
    full = tiny.encode_text_ids(ids, truncate=False)
    cut = tiny.encode_text_ids(ids, truncate=True)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, tiny.model.encode_text(ids), atol=1e-5, rtol=1e-5)


def test_deep_text_prompts_replace_slots_after_sos(tiny):
    ids = tiny.tokenize(["X X X dog.", "X X X sea lion."])
    deep = {1: torch.randn(3, tiny.text_width)}
    seen, handles = record_block_inputs(tiny._text.blocks)
    tiny.encode_text(tiny.embed_tokens(ids), tiny.eot_index(ids), deep=deep)
    for h in handles:
        h.remove()
    assert torch.equal(seen[1][:, 1:4], deep[1].expand(2, -1, -1))
    assert seen[1].shape[1] == int(tiny.eot_index(ids).max()) + 1  # truncated after the longest EOT


def test_empty_vision_prompts_equal_open_clip_forward(tiny):
    images = torch.randn(3, 3, tiny.image_size, tiny.image_size)
    plain = tiny.encode_image(images)
    torch.testing.assert_close(plain, tiny.model.encode_image(images))
    for placement in ("after_cls", "after_patches"):
        empty = VisionPrompts({0: torch.zeros(0, tiny.vision_width)}, placement=placement)
        torch.testing.assert_close(tiny.encode_image(images, empty), plain, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # where open_clip's attention leaves its fast path
        torch.testing.assert_close(tiny.encode_image(images), tiny.model.encode_image(images))


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_written_out_block_equals_open_clip_block_with_gradients(tiny, tower):
    blocks, mask = ((tiny.model.visual.transformer.resblocks, None) if tower == "vision" else
                    (tiny._text.blocks, tiny._text.mask[:6, :6]))
    block = blocks[0]
    assert _is_standard_block(block)
    x = torch.randn(3, 6, block.ln_1.normalized_shape[0], requires_grad=True)
    ours = _run_block(block, x, mask)
    theirs = block(x, attn_mask=mask)  # open_clip's own forward, through nn.MultiheadAttention
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(ours)
    grad_ours, = torch.autograd.grad((ours * weights).sum(), x)
    grad_theirs, = torch.autograd.grad((theirs * weights).sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-5, rtol=1e-5)


def test_other_blocks_run_their_own_forward():
    from open_clip.transformer import CustomResidualAttentionBlock

    block = CustomResidualAttentionBlock(16, 2).eval()
    x = torch.randn(2, 5, 16)
    assert not _is_standard_block(block)
    assert torch.equal(_run_block(block, x), block(x))


@pytest.mark.parametrize("placement", ["after_cls", "after_patches"])
@pytest.mark.parametrize("before_ln_pre", [True, False])
def test_vision_prompt_insertion_and_deep_replacement(tiny, placement, before_ln_pre):
    d, n = tiny.vision_width, 3
    prompts = VisionPrompts({0: torch.randn(n, d), 1: torch.randn(n, d)}, placement, before_ln_pre)
    images = torch.randn(2, 3, tiny.image_size, tiny.image_size)
    visual = tiny.model.visual
    n_patches = (tiny.image_size // tiny.patch_size) ** 2
    start = 1 if placement == "after_cls" else 1 + n_patches
    seen, handles = record_block_inputs(visual.transformer.resblocks)
    tiny.encode_image(images, prompts)
    for h in handles:
        h.remove()
    assert seen[0].shape[1] == 1 + n_patches + n
    expected0 = visual.ln_pre(prompts.tokens[0]) if before_ln_pre else prompts.tokens[0]
    torch.testing.assert_close(seen[0][:, start:start + n], expected0.expand(2, -1, -1))
    assert torch.equal(seen[1][:, start:start + n], prompts.tokens[1].expand(2, -1, -1))
    # the patch tokens are where they belong: the same as without prompts
    plain_seen, handles = record_block_inputs(visual.transformer.resblocks)
    tiny.encode_image(images, VisionPrompts({0: torch.zeros(0, d)}, placement, before_ln_pre))
    for h in handles:
        h.remove()
    patches = slice(1, 1 + n_patches)
    shifted = slice(1 + n, 1 + n + n_patches) if placement == "after_cls" else patches
    torch.testing.assert_close(seen[0][:, shifted], plain_seen[0][:, patches])


def test_widths_come_from_the_model(tiny):
    wide = FrozenCLIP.load("tiny-vit-wide")
    assert (tiny.text_width, tiny.vision_width, tiny.embed_dim) == (64, 64, 32)
    assert (wide.text_width, wide.vision_width, wide.embed_dim) == (80, 96, 48)
    assert all(not p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.model.training  # the backbone stays in eval mode


def test_local_checkpoint_file_loads_those_weights(tiny, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), path)
    again = FrozenCLIP.load("tiny-vit", pretrained=str(path))  # a fresh random init unless the file is read
    for (name, a), b in zip(tiny.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resnet_text_works_and_vision_prompts_are_refused():
    rn = FrozenCLIP.load("tiny-rn")
    assert rn.encode_text_ids(rn.tokenize(["a photo of a dog."])).shape == (1, rn.embed_dim)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(rn.encode_image(images), rn.model.encode_image(images))  # open_clip's own forward
    with pytest.raises(BackboneError, match="ViT"):
        rn.encode_image(torch.randn(1, 3, 32, 32), VisionPrompts({0: torch.zeros(1, 16)}))


def test_unknown_model_names_close_ones():
    with pytest.raises(BackboneError, match="ViT-B-16"):
        FrozenCLIP.load("ViT-B-61")


def test_unknown_tag_lists_tags():
    with pytest.raises(BackboneError, match="openai"):
        FrozenCLIP.load("RN50", pretrained="opneai")


def test_missing_checkpoint_file():
    with pytest.raises(BackboneError, match="does not exist"):
        FrozenCLIP.load("tiny-vit", pretrained="/nowhere/weights.bin")


def test_tag_that_needs_a_download_while_offline():
    with pytest.raises(BackboneError, match="local file"):
        FrozenCLIP.load("RN50", pretrained="openai")


def test_prompt_longer_than_context_names_the_class(tiny):
    with pytest.raises(BackboneError, match="pneumonoultramicroscopic"):
        tiny.tokenize(["X " * 60 + "pneumonoultramicroscopicsilicovolcanoconiosis " * 4])


def test_local_dir_with_config_and_weights(tiny, tmp_path):
    import json

    from safetensors.torch import save_file

    config = json.loads((Path(__file__).parents[1] / "promptclip" / "model_configs" / "tiny-vit.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, tmp_path / "open_clip_model.safetensors")
    local = FrozenCLIP.load(f"local-dir:{tmp_path}")
    ids = tiny.tokenize(["a photo of a dog."])
    torch.testing.assert_close(local.encode_text_ids(ids), tiny.encode_text_ids(ids))
    with pytest.raises(BackboneError, match="not found"):
        FrozenCLIP.load(f"local-dir:{tmp_path / 'missing'}")


def test_hf_hub_id_while_offline_suggests_a_local_folder():
    with pytest.raises(BackboneError, match="local-dir:"):
        FrozenCLIP.load("hf-hub:someone/some-clip")


def test_safetensors_checkpoint_file_loads_those_weights(tiny, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, path)
    again = FrozenCLIP.load("tiny-vit", pretrained=str(path))
    assert again.pretrained == str(path)
    for (name, a), b in zip(tiny.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_files_are_read_with_weights_only(tiny, tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), path)
    calls, load = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    FrozenCLIP.load("tiny-vit", pretrained=str(path))
    assert calls == [True]


def test_weights_of_another_architecture_name_the_model_they_fit(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(FrozenCLIP.load("tiny-vit-wide").model.state_dict(), path)
    with pytest.raises(BackboneError, match=r"another architecture than model\.name=tiny-vit .*"
                                            r"text_projection 80×48 instead of 64×32.*fit model\.name=tiny-vit-wide"):
        FrozenCLIP.load("tiny-vit", pretrained=str(path))
    with pytest.raises(BackboneError, match=r"fit model\.name=tiny-vit-wide"):
        FrozenCLIP.load("tiny-rn", pretrained=str(path))
