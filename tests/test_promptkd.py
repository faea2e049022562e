"""PromptKD: the reference's loss on a hand-computed case, and the whole route on the tiny CLIPs:
a teacher prompt learner loaded from this framework's export, its text features stored with the
student, checkpoints, exports and evaluation without the teacher."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from training_helpers import (
    TINY,
    TINY_TEACHER,
    prompt_method_files,
    prompt_overrides,
    tiny_dataset,
    tiny_teacher_export,
    write_class_dictionary,
)

from clipcore import runner
from clipcore.config import load_config
from clipdistill.app import register_methods
from kdpl import methods as kdpl_methods
from kdpl.objectives.promptkd import distillation_loss

register_methods()


def test_the_loss_is_the_references_kl_sum_over_the_number_of_logits():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for t in (1.0, 2.0):
        p = (teacher / t).softmax(1)
        by_hand = (p * (p.log() - (student / t).log_softmax(1))).sum() * t * t / 6
        assert distillation_loss(student, teacher, t).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert distillation_loss(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_promptkd_trains_a_projector_onto_the_stored_teacher_text_and_evaluates_without_the_teacher(
        tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path / "data")
    dictionary = write_class_dictionary(tmp_path / "dictionary.csv")
    cfg = load_config(prompt_method_files("promptsrc", "promptkd"),
                      prompt_overrides(data, tmp_path / "runs", dictionary, tmp_path / "cache", "promptsrc",
                                       "promptkd", export="true"))
    assert cfg.objective.teacher_export == str(tiny_teacher_export())
    run = runner.train(cfg)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    head = {k for k in ckpt["state_dict"] if k.startswith("objective_head.")}
    assert {"objective_head.projector.0.weight", "objective_head.projector.1.running_mean",
            "objective_head.teacher_text"} <= head
    assert ckpt["objective_state"]["teacher_classnames"] == ["cat", "dog", "bird", "fish"]
    text = ckpt["state_dict"]["objective_head.teacher_text"]
    student_dim, teacher_dim = (json.loads(f.read_text())["embed_dim"] for f in (TINY, TINY_TEACHER))
    assert text.shape == (4, teacher_dim) and torch.allclose(text.norm(dim=-1), torch.ones(4))

    # Evaluation (checkpoint, novel classes; export) never loads the teacher.
    monkeypatch.setattr(kdpl_methods, "load_prompt_teacher", lambda *a: pytest.fail("the teacher was loaded"))
    cfg_new, module, datamodule = runner.module_from_checkpoint(run / "checkpoints" / "last.ckpt", [],
                                                                ["data.subsample_classes=new"])
    metrics = runner.evaluate(cfg_new, module, datamodule, tmp_path / "new")
    assert 0.0 <= metrics["test/acc"] <= 1.0
    _, from_ckpt, dm = runner.module_from_checkpoint(run / "checkpoints" / "last.ckpt")
    _, from_export, _ = runner.module_from_export(run / "exports" / "final")
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    classes = from_ckpt.eval_classnames
    with torch.no_grad():
        a = from_ckpt.eval().objective.eval_logits(from_ckpt.learner, batch["image"], classes)
        b = from_export.eval().objective.eval_logits(from_export.learner, batch["image"], classes)
        own = from_ckpt.learner(batch["image"]).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not torch.allclose(a, own)  # scored through the projector, not the learner's own text
    projected = from_ckpt.objective_head.projector(torch.randn(2, student_dim))
    assert F.normalize(projected, dim=-1).shape == (2, teacher_dim)
