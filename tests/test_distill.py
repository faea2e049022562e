"""KDPL class selection and symmetric KL against the invariants of kdpl.md §7 (1-6)."""
import math

import numpy as np
import pytest
import torch

from kdpl.distill import (
    mean_teacher_probs,
    select_classes,
    symmetric_kl,
    teacher_logits,
    topk_classes,
)

B, C = 6, 11


@pytest.fixture
def logits_pair():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(B, C, generator=gen, dtype=torch.float64) * 3
    teacher = torch.randn(B, C, generator=gen, dtype=torch.float64) * 3
    return student, teacher


def test_zero_for_identical_logits(logits_pair):
    student, _ = logits_pair
    loss, fwd, rev = symmetric_kl(student, student.clone())
    for value in (loss, fwd, rev):
        assert abs(value.item()) < 1e-6


def test_outputs_are_fp32_for_half_inputs(logits_pair):
    student, teacher = logits_pair
    loss, fwd, rev = symmetric_kl(student.half(), teacher.half())
    assert loss.dtype == fwd.dtype == rev.dtype == torch.float32
    ref, _, _ = symmetric_kl(student.half().float(), teacher.half().float())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_symmetric_and_half_jeffreys_closed_form(logits_pair):
    student, teacher = logits_pair
    loss_st, fwd_st, rev_st = symmetric_kl(student, teacher)
    loss_ts, fwd_ts, rev_ts = symmetric_kl(teacher, student)
    assert loss_st.item() == pytest.approx(loss_ts.item(), rel=1e-6)
    # swapping the arguments swaps the directions
    assert fwd_st.item() == pytest.approx(rev_ts.item(), rel=1e-6)
    assert rev_st.item() == pytest.approx(fwd_ts.item(), rel=1e-6)
    assert fwd_st.item() != pytest.approx(rev_st.item(), rel=1e-3)  # test is not degenerate

    log_ps, log_pt = student.log_softmax(-1), teacher.log_softmax(-1)
    ps, pt = log_ps.exp(), log_pt.exp()
    jeffreys_half = 0.5 * ((pt - ps) * (log_pt - log_ps)).sum() / B  # sum / B, not / (B*C)
    assert loss_st.item() == pytest.approx(jeffreys_half.item(), rel=1e-5)
    assert fwd_st.item() == pytest.approx(((pt * (log_pt - log_ps)).sum() / B).item(), rel=1e-5)
    assert rev_st.item() == pytest.approx(((ps * (log_ps - log_pt)).sum() / B).item(), rel=1e-5)


def test_alpha_beta_weighting(logits_pair):
    student, teacher = logits_pair
    loss, fwd, rev = symmetric_kl(student, teacher, alpha=0.3, beta=1.7)
    assert loss.item() == pytest.approx(0.3 * fwd.item() + 1.7 * rev.item(), rel=1e-6)


def test_invariant_to_row_shifts_and_shared_class_permutation(logits_pair):
    student, teacher = logits_pair
    loss, _, _ = symmetric_kl(student, teacher)
    shift_s = torch.linspace(-50, 50, B, dtype=student.dtype)[:, None]
    shift_t = torch.linspace(7, -3, B, dtype=student.dtype)[:, None]
    shifted, _, _ = symmetric_kl(student + shift_s, teacher + shift_t)
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-5)

    perm = torch.randperm(C, generator=torch.Generator().manual_seed(1))
    permuted, _, _ = symmetric_kl(student[:, perm], teacher[:, perm])
    assert permuted.item() == pytest.approx(loss.item(), rel=1e-5)
    # permuting only one side is a different problem: the loss must change
    mismatched, _, _ = symmetric_kl(student[:, perm], teacher)
    assert mismatched.item() != pytest.approx(loss.item(), rel=1e-3)


def _grad(student, teacher, alpha, beta):
    student = student.float().clone().requires_grad_(True)
    teacher = teacher.float().clone().requires_grad_(True)
    loss, _, _ = symmetric_kl(student, teacher, alpha=alpha, beta=beta)
    loss.backward()
    assert teacher.grad is None  # the teacher is a constant
    return student.grad.double()


def test_forward_and_reverse_gradients_match_closed_forms(logits_pair):
    student, teacher = logits_pair
    student, teacher = student.float().double(), teacher.float().double()
    log_ps, log_pt = student.log_softmax(-1), teacher.log_softmax(-1)
    ps, pt = log_ps.exp(), log_pt.exp()

    grad_forward = _grad(student, teacher, alpha=0.5, beta=0.0)
    torch.testing.assert_close(grad_forward, 0.5 * (ps - pt) / B, rtol=1e-4, atol=1e-6)

    kl_rev_rows = (ps * (log_ps - log_pt)).sum(-1, keepdim=True)
    expected_reverse = 0.5 * ps * ((log_ps - log_pt) - kl_rev_rows) / B
    grad_reverse = _grad(student, teacher, alpha=0.0, beta=0.5)
    torch.testing.assert_close(grad_reverse, expected_reverse, rtol=1e-4, atol=1e-6)

    grad_total = _grad(student, teacher, alpha=0.5, beta=0.5)
    torch.testing.assert_close(grad_total, grad_forward + grad_reverse, rtol=1e-5, atol=1e-7)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        symmetric_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_selection_returns_all_classes_when_k_at_least_c(logits_pair):
    _, teacher = logits_pair
    for k in (C, C + 5, 1000):
        idx = select_classes(teacher, k)
        assert idx.dtype == torch.long
        assert idx.tolist() == list(range(C))


def test_selection_is_mean_of_softmaxes_not_softmax_of_mean():
    # Image 0 is certain about class 0; image 1 splits between classes 1 and 2 and hates class 0.
    teacher = torch.tensor([[20.0, 0.0, 0.0], [-20.0, 0.0, 1.0]])
    mean_of_softmax = teacher.softmax(-1).mean(0)  # ~[0.50, 0.13, 0.37]
    softmax_of_mean = teacher.mean(0).softmax(-1)  # mean logits [0, 0, 0.5]
    assert mean_of_softmax.argmax().item() == 0
    assert softmax_of_mean.argmax().item() == 2
    assert select_classes(teacher, 1).tolist() == [0]
    assert set(select_classes(teacher, 2).tolist()) == {0, 2}
    torch.testing.assert_close(mean_teacher_probs(teacher), mean_of_softmax)


def test_selection_matches_reference_argpartition():
    gen = torch.Generator().manual_seed(3)
    teacher = torch.randn(32, 500, generator=gen) * 4
    probs = torch.softmax(teacher, dim=-1).numpy()
    reference = np.argpartition(probs.mean(0), -50)[-50:]  # the published `sampling`
    idx = select_classes(teacher, 50)
    assert set(idx.tolist()) == set(reference.tolist())
    scores = mean_teacher_probs(teacher)[idx]
    assert torch.all(scores[:-1] >= scores[1:])  # sorted by decreasing mean probability


def test_selection_is_independent_of_student_and_gradient_free():
    gen = torch.Generator().manual_seed(4)
    teacher = (torch.randn(8, 40, generator=gen) * 3).requires_grad_(True)
    idx = select_classes(teacher, 10)
    assert not idx.requires_grad
    # loss on selected columns, for two very different students: the set is the same and the
    # teacher receives no gradient through the selection or the loss
    for seed in (5, 6):
        student = torch.randn(8, 40, generator=torch.Generator().manual_seed(seed))
        student.requires_grad_(True)
        loss, _, _ = symmetric_kl(student[:, idx], teacher[:, idx])
        loss.backward()
        assert student.grad[:, idx].abs().sum() > 0
        assert student.grad[:, [c for c in range(40) if c not in idx.tolist()]].abs().sum() == 0
    assert teacher.grad is None
    assert select_classes(teacher, 10).tolist() == idx.tolist()


def test_topk_rejects_bad_k():
    with pytest.raises(ValueError):
        topk_classes(torch.rand(5), 0)


def test_teacher_logits_closed_form_and_bound():
    gen = torch.Generator().manual_seed(7)
    image = torch.randn(4, 16, generator=gen) * 5
    text = torch.randn(9, 16, generator=gen) * 0.1
    log_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))
    logits = teacher_logits(image.half(), text, log_scale)
    assert logits.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(
        image.half().float()[:, None, :], text[None, :, :], dim=-1
    )
    torch.testing.assert_close(logits, 100.0 * cos, rtol=1e-4, atol=1e-4)
    assert logits.abs().max() <= 100.0 + 1e-3
    # identical directions give exactly sigma
    same = teacher_logits(text[:2] * 3.0, text[:2], math.log(100.0))
    assert same.diagonal().tolist() == pytest.approx([100.0, 100.0], rel=1e-5)


def test_teacher_logits_rejects_dim_mismatch():
    with pytest.raises(ValueError, match="dim"):
        teacher_logits(torch.zeros(2, 8), torch.zeros(3, 4), 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_selection_and_loss_do_not_sync_with_the_host():
    """The reference moves teacher logits to numpy every step; this must stay on the device."""
    device = torch.device("cuda")
    teacher = torch.randn(32, 2000, device=device) * 4
    student = torch.randn(32, 2000, device=device, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        idx = select_classes(teacher, 1000)
        everything = select_classes(teacher, 5000)  # k >= C path
        loss, _, _ = symmetric_kl(student, teacher)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert idx.device.type == "cuda" and idx.numel() == 1000
    assert everything.device.type == "cuda" and everything.numel() == 2000
    assert torch.isfinite(student.grad).all()
