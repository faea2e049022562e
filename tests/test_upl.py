"""UPL's pseudo-label selection against hand-computed cases and the reference's own function.

``reference_select`` is tonyhuang2022/UPL ``trainers/utils.py::select_top_k_similarity_per_class``
(the branch without image features), with the image paths replaced by positions; on inputs
without tied confidences its selection must be ours exactly.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import TINY_TEACHER, prompt_method_files, prompt_overrides, tiny_dataset, write_class_dictionary

from clipcore import runner
from clipcore.config import load_config
from clipdistill import train as train_cli
from clipdistill.app import register_methods
from kdpl.pseudo_labels import average_probabilities, select_top_k_per_class

register_methods()


def reference_select(outputs: torch.Tensor, K: int) -> dict[int, int]:
    """The reference, verbatim but for the paths (``img_paths`` = positions)."""
    outputs = torch.nn.Softmax(dim=1)(outputs)
    output_m = outputs.cpu().detach().numpy()
    img_paths = np.arange(len(output_m))
    output_m_max = output_m.max(axis=1)
    output_m_max_id = np.argsort(-output_m_max)
    output_m = output_m[output_m_max_id]
    img_paths = img_paths[output_m_max_id]
    output_m_max = output_m_max[output_m_max_id]
    ids = (-output_m).argsort()[:, 0]
    predict_label_dict = {}
    for id in list(set(ids.tolist())):
        index = np.where(ids == id)
        img_paths_class = img_paths[index]
        chosen = img_paths_class[:K] if K >= 0 else img_paths_class
        for img_path in chosen:
            predict_label_dict[int(img_path)] = int(id)
    return predict_label_dict


def ours(logits: torch.Tensor, k: int) -> dict[int, int]:
    confidence, predicted = average_probabilities([logits.softmax(dim=-1)])
    selected = select_top_k_per_class(confidence, predicted, k)
    return dict(zip(selected.positions.tolist(), selected.labels.tolist()))


@pytest.mark.parametrize("k", [1, 3, 16, -1])
def test_the_selection_is_the_references_on_random_logits(k):
    generator = torch.Generator().manual_seed(k + 10)
    logits = 4 * torch.randn(200, 7, generator=generator)
    logits[:, 6] -= 6  # a class few images are predicted as: it gets fewer than K
    assert ours(logits, k) == reference_select(logits, k)


def test_hand_computed_case():
    # Predicted classes and confidences of 7 images over 3 classes (class 2 is never predicted).
    predicted = torch.tensor([0, 0, 1, 0, 1, 0, -1])
    confidence = torch.tensor([0.5, 0.9, 0.6, 0.7, 0.6, 0.7, -1.0])
    chosen = select_top_k_per_class(confidence, predicted, 2)
    # Class 0: 0.9 (image 1), then the tie 0.7 between images 3 and 5 goes to the earlier image;
    # class 1: both its images (fewer than K=2 would keep what there is); image 6 was unreadable.
    assert chosen.positions.tolist() == [1, 2, 3, 4]
    assert chosen.labels.tolist() == [0, 1, 0, 1]
    assert chosen.per_class_counts(3).tolist() == [2, 2, 0]
    assert chosen.accuracy(torch.tensor([0, 0, 1, 1, 1, 0, 2])) == pytest.approx(0.75)
    everything = select_top_k_per_class(confidence, predicted, -1)
    assert everything.positions.tolist() == [0, 1, 2, 3, 4, 5]


def test_labellers_are_averaged_as_probabilities_not_logits():
    # Labeller A is very sure of class 0, B mildly prefers class 1: the mean probability picks
    # class 0 (0.5 * (0.98 + 0.4) = 0.69), whereas mean *logits* would pick class 1.
    a = torch.tensor([[0.98, 0.02]])
    b = torch.tensor([[0.40, 0.60]])
    confidence, predicted = average_probabilities([a, b])
    assert predicted.tolist() == [0] and confidence.item() == pytest.approx(0.69)
    unreadable = torch.full((1, 2), float("nan"))
    confidence, predicted = average_probabilities([torch.cat([a, unreadable])])
    assert predicted.tolist() == [0, -1] and confidence[1].item() == -1.0


def test_upl_trains_on_pseudo_labels_it_caches_and_reports(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    dictionary = write_class_dictionary(tmp_path / "dictionary.csv")

    def train(experiment: str) -> Path:
        """The command line: ``train.py -c method/coop.yaml -c objective/upl.yaml ...``."""
        files = [x for f in prompt_method_files("coop", "upl") for x in ("-c", str(f))]
        settings = prompt_overrides(data, tmp_path / "runs", dictionary, tmp_path / "cache", "coop", "upl",
                                    data__num_shots=1, experiment=experiment)
        assert train_cli.main([*files, *settings]) == 0
        (run,) = (tmp_path / "runs" / experiment).glob("*/pseudo_labels.csv")
        return run.parent

    run = train("first")
    rows = list(csv.DictReader(open(run / "pseudo_labels.csv")))
    # One most-confident image per predicted class, each a real training image.
    predicted = [r["pseudo_label"] for r in rows]
    assert len(predicted) == len(set(predicted)) >= 1
    assert all(float(r["confidence"]) > 0 for r in rows)
    cached = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 1
    # A second run reuses the cache (its file is untouched) and selects the same images.
    stamp = cached[0].stat().st_mtime_ns
    again = train("again")
    assert cached[0].stat().st_mtime_ns == stamp
    assert list(csv.DictReader(open(again / "pseudo_labels.csv"))) == rows


def test_the_prompt_ensemble_averages_the_logits_of_several_checkpoints(tmp_path):
    from clipdistill import evaluate

    data = tiny_dataset(tmp_path / "data")
    dictionary = write_class_dictionary(tmp_path / "dictionary.csv")
    ckpts = []
    for seed in (7, 8):
        cfg = load_config(prompt_method_files("coop", "upl"),
                          prompt_overrides(data, tmp_path / "runs", dictionary, tmp_path / "cache", "coop", "upl",
                                           seed=seed, experiment=f"seed{seed}", prompt__ctx_init="null",
                                           prompt__n_ctx=4))
        ckpts.append(runner.train(cfg) / "checkpoints" / "last.ckpt")
    out = tmp_path / "ensemble"
    assert evaluate.main(["--ckpt", str(ckpts[0]), "--ensemble", str(ckpts[1]), "--out", str(out)]) == 0
    logits, labels = [], None
    for ckpt in ckpts:
        _, module, datamodule = runner.module_from_checkpoint(ckpt)
        datamodule.setup("test")
        batches = list(datamodule.test_dataloader())
        with torch.no_grad():
            logits.append(torch.cat([module.eval().learner(b["image"]).logits for b in batches]))
        labels = torch.cat([b["label"] for b in batches])
    assert not torch.allclose(logits[0], logits[1])  # two different prompts
    expected = ((logits[0] + logits[1]) / 2).argmax(-1)
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    names = datamodule.classnames
    assert [r["prediction"] for r in rows] == [names[i] for i in expected.tolist()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx((expected == labels).float().mean().item())
    assert evaluate.main(["--ensemble", str(ckpts[1])]) == 2


def test_several_labellers_are_loaded_and_key_their_own_cache(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    dictionary = write_class_dictionary(tmp_path / "dictionary.csv")
    section = f"{{name: tiny-teacher, config: {TINY_TEACHER}, pretrained: null}}"
    for i, (labellers, count) in enumerate((("[student]", 1), ("[student,teacher]", 2), (f"[{section}]", 1))):
        cfg = load_config(prompt_method_files("coop", "upl"),
                          prompt_overrides(data, tmp_path / "runs", dictionary, tmp_path / "cache", "coop", "upl",
                                           objective__labellers=labellers, experiment=f"labellers{i}"))
        assert len(cfg.objective.labellers) == count
        assert (runner.train(cfg) / "pseudo_labels.csv").is_file()
    # The student alone, student + teacher, and the teacher as a model section: three labellings
    # (the section builds the same weights as `teacher`, but alone, so its own cache entry).
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3
