"""Test-time prompt tuning: the reference's selection and loss on hand-computed cases, the
views, the per-image tuning and restore, and ``eval ... tpt.enabled=true`` end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from training_helpers import prompt_method_files, prompt_overrides, tiny_dataset, write_class_dictionary

from clipcore import runner
from clipcore.config import load_config
from clipcore.data.transforms import build_transform
from clipdistill.app import register_methods
from kdpl.tpt import TPTViews, avg_entropy, select_confident_samples, tune_and_predict, uses_augmix

register_methods()


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(-1)


def test_selection_keeps_the_lowest_entropy_fraction_most_confident_first():
    logits = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 9.0, 0.0],
                           [1.0, 1.0, 0.0], [0.0, 0.0, 3.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.5],
                           [0.0, 4.0, 0.0], [0.2, 0.2, 0.0]])
    kept, idx = select_confident_samples(logits, 0.3)  # int(10 * 0.3) = 3 views
    assert idx.tolist() == [3, 1, 8]
    assert torch.equal(kept, logits[[3, 1, 8]])
    assert select_confident_samples(logits, 0.05)[1].numel() == 0  # int(0.5) = 0, as the reference


def test_avg_entropy_is_the_entropy_of_the_mean_prediction():
    logits = torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    mean = logits.softmax(-1).mean(0)
    assert avg_entropy(logits).item() == pytest.approx(entropy(mean).item(), abs=1e-6)
    # A single confident view: its own entropy; identical views: the same.
    one = torch.tensor([[10.0, 0.0]])
    assert avg_entropy(one.repeat(4, 1)).item() == pytest.approx(entropy(one.softmax(-1)[0]).item(), abs=1e-6)
    assert avg_entropy(torch.zeros(2, 4)).item() == pytest.approx(math.log(4), abs=1e-6)


class Linear(torch.nn.Module):
    """A stand-in learner: logits = views . W (the learned tensor)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(12, 5, generator=torch.Generator().manual_seed(0)))

    def forward(self, views):
        class Out:
            logits = views.flatten(1)[:, :12] @ self.weight
        return Out()

    def learned_state(self):
        return {"weight": self.weight.detach()}

    def load_learned_state(self, state):
        with torch.no_grad():
            self.weight.copy_(state["weight"])


def test_one_step_lowers_the_selected_views_entropy_and_restores_the_learner():
    learner = Linear()
    views = torch.randn(16, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    before = learner.weight.detach().clone()
    untuned = learner(views[:1]).logits.detach()
    kept, idx = select_confident_samples(learner(views).logits.detach(), 0.25)
    tuned = tune_and_predict(learner, views, steps=1, lr=0.1, selection=0.25)
    assert torch.equal(learner.weight.detach(), before)  # restored for the next image
    assert not torch.allclose(tuned, untuned)
    assert torch.allclose(tune_and_predict(learner, views, steps=0, lr=0.1, selection=0.25), untuned)
    # The step was AdamW on avg_entropy of the selected views: redo it by hand.
    w = before.clone().requires_grad_(True)
    loss = avg_entropy((views.flatten(1)[:, :12] @ w)[idx])
    loss.backward()
    by_hand = torch.optim.AdamW([w], 0.1)
    by_hand.step()
    assert torch.allclose(tuned, views[:1].flatten(1)[:, :12] @ w.detach(), atol=1e-6)
    learner.load_learned_state({"weight": w.detach()})
    assert avg_entropy(learner(views).logits.detach()[idx]) < loss


def test_views_start_with_the_evaluation_view_and_are_seeded_by_torch():
    image = Image.new("RGB", (40, 30), (200, 40, 10))
    image.paste((0, 90, 250), (5, 5, 25, 20))
    original = build_transform(False, 16, "clip", None)
    views = TPTViews(original, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), views=8, augmix=True)
    torch.manual_seed(3)
    first = views(image)
    torch.manual_seed(3)
    assert torch.equal(views(image), first)
    assert first.shape == (8, 3, 16, 16)
    assert torch.equal(first[0], original(image))
    assert not torch.allclose(first[1], first[2])
    assert uses_augmix(None, "imagenet_a") is False and uses_augmix(None, "dtd") is True
    assert uses_augmix(False, "dtd") is False


def test_eval_with_tpt_tunes_per_image_and_reports_its_cost(tmp_path, capsys):
    from clipdistill import evaluate

    data = tiny_dataset(tmp_path / "data")
    dictionary = write_class_dictionary(tmp_path / "dictionary.csv")
    files = prompt_method_files("coop", "supervised")
    run = runner.train(load_config(files, prompt_overrides(data, tmp_path / "runs", dictionary, tmp_path / "cache")))
    ckpt = str(run / "checkpoints" / "last.ckpt")
    # The command line, with the shipped TPT config (the reference's defaults) and fewer views.
    out = tmp_path / "tpt"
    assert evaluate.main(["--ckpt", ckpt, "-c", "eval/tpt.yaml", "tpt.views=8", "tpt.selection=0.25",
                          "tpt.lr=0.05", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/tpt_seconds_per_image"] > 0
    assert 0.0 <= metrics["test/tpt_changed_predictions"] <= 1.0
    assert 0.0 <= metrics["test/acc"] <= 1.0
    capsys.readouterr()
    assert evaluate.main(["--ckpt", ckpt, "tpt.enabled=true", "tpt.views=4", "tpt.selection=0.1"]) == 2
    assert "tpt.selection=0.1" in capsys.readouterr().err
