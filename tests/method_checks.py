"""What every method's end-to-end test checks of a finished run: it loads back with the logits of the model that
trained it, its reported test accuracy is those logits' accuracy, and it predicts image files."""
import pytest
import torch
from PIL import Image

from promptclip import load_run
from promptclip.runs import default_run_dir


def check_loads_and_predicts(model, cfg, root, result, atol=1e-5):
    """``model`` (in memory, after ``run(cfg)`` returned ``result``) against the run folder, on ``root/test``."""
    loaded = load_run(default_run_dir(cfg), device="cpu")
    paths = sorted((root / "test").rglob("*.png"))
    images = torch.stack([loaded.transform(Image.open(p).convert("RGB")) for p in paths])
    model.eval()
    with torch.no_grad():
        expected = model.head(model.image_features(images)).logits
    torch.testing.assert_close(loaded.logits(images), expected, rtol=0, atol=atol)
    labels = torch.tensor([loaded.classnames.index(p.parent.name) for p in paths])
    assert result["test"]["accuracy"] == pytest.approx(100.0 * float((expected.argmax(-1) == labels).float().mean()))
    predictions = loaded.predict(paths[:2], topk=2)
    assert [p["path"] for p in predictions] == [str(p) for p in paths[:2]]
    assert [p["top"][0][0] for p in predictions] == [loaded.classnames[int(i)] for i in expected[:2].argmax(-1)]
    return loaded
