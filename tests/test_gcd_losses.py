"""GCD losses against closed forms and explicit loops (spec §4)."""
import math

import pytest
import torch
import torch.nn.functional as F

from gcd.config import GCDLossConfig
from gcd.losses import (
    GCDLoss,
    distill_kl,
    gcd_total_loss,
    info_nce_logits,
    mean_entropy_regularizer,
    self_distillation_loss,
    supcon_loss,
    teacher_temperature_schedule,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # every test draws the same numbers whatever runs before it


def test_distill_kl_equals_explicit_sums():
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    p, q = s.softmax(1), t.softmax(1)
    forward, reverse = distill_kl(s, t)
    assert forward.dtype == torch.float32
    assert forward.item() == pytest.approx((q * (q / p).log()).sum(1).mean().item(), rel=1e-5)
    assert reverse.item() == pytest.approx((p * (p / q).log()).sum(1).mean().item(), rel=1e-5)
    assert forward.item() != pytest.approx(reverse.item(), rel=1e-3)  # KL is not symmetric


def test_reverse_kl_gradient_flows_through_both_student_arguments():
    t = torch.randn(4, 6)
    s = torch.randn(4, 6, requires_grad=True)
    _, reverse = distill_kl(s, t)
    (grad,) = torch.autograd.grad(reverse, s)

    s2 = s.detach().clone().requires_grad_(True)
    log_p, log_q = s2.log_softmax(1), t.log_softmax(1)
    (log_p.exp() * (log_p - log_q)).sum(1).mean().backward()
    torch.testing.assert_close(grad, s2.grad, rtol=1e-5, atol=1e-7)

    # with the weights p held constant (a cross-entropy-style target) the gradient differs
    s3 = s.detach().clone().requires_grad_(True)
    log_p3 = s3.log_softmax(1)
    (log_p3.exp().detach() * (log_p3 - log_q)).sum(1).mean().backward()
    assert not torch.allclose(grad, s3.grad, atol=1e-4)


def test_forward_kl_gradient_equals_cross_entropy_gradient_and_teacher_is_constant():
    t = torch.randn(3, 5, requires_grad=True)
    s = torch.randn(3, 5, requires_grad=True)
    forward, reverse = distill_kl(s, t)
    (forward + reverse).backward()
    assert t.grad is None
    s2 = s.detach().clone().requires_grad_(True)
    F.cross_entropy(s2, t.detach().softmax(1)).backward()
    s.grad = None
    distill_kl(s, t)[0].backward()
    torch.testing.assert_close(s.grad, s2.grad)


def test_teacher_temperature_schedule():
    assert teacher_temperature_schedule(0) == pytest.approx(0.07)
    assert teacher_temperature_schedule(15) == pytest.approx(0.07 - 15 * 0.03 / 29)
    assert teacher_temperature_schedule(29) == pytest.approx(0.04)
    assert teacher_temperature_schedule(30) == 0.04
    assert teacher_temperature_schedule(500) == 0.04
    assert teacher_temperature_schedule(2, 0.5, 0.1, 5) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        teacher_temperature_schedule(-1)


@pytest.mark.parametrize("epoch", [0, 12, 40])
def test_self_distillation_equals_explicit_cross_view(epoch):
    logits = torch.randn(8, 5, requires_grad=True)  # 2 views x 4 images
    loss = self_distillation_loss(logits, epoch)
    tau = teacher_temperature_schedule(epoch)
    v1, v2 = logits[:4], logits[4:]

    def ce(teacher, student):  # mean over rows of -sum q log p
        q = (teacher.detach() / tau).softmax(1)
        return -(q * (student / 0.1).log_softmax(1)).sum(1).mean()

    expected = 0.5 * (ce(v1, v2) + ce(v2, v1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, grad_expected)
    same_view = 0.5 * (ce(v1, v1) + ce(v2, v2))
    assert loss.item() != pytest.approx(same_view.item(), rel=1e-3)


def test_mean_entropy_regularizer_closed_forms():
    c = 5
    uniform_mean = torch.eye(c) * 50.0  # each row one-hot on a different class: p̄ uniform
    assert mean_entropy_regularizer(uniform_mean).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.zeros(4, c)
    collapsed[:, 2] = 100.0  # every row predicts class 2: p̄ one-hot, H = 0
    assert mean_entropy_regularizer(collapsed).item() == pytest.approx(math.log(c), abs=1e-5)
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])  # p̄ = (3/4, 1/4)
    expected = 0.75 * math.log(0.75) + 0.25 * math.log(0.25) + math.log(2)
    assert mean_entropy_regularizer(logits).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_logits_layout_and_loss():
    feats = torch.randn(6, 4)  # B = 3 images, 2 views
    logits, labels = info_nce_logits(feats)
    assert logits.shape == (6, 5) and labels.tolist() == [0] * 6
    f = F.normalize(feats, dim=1)
    sim = f @ f.T
    for i in range(6):
        positive = (i + 3) % 6
        negatives = [j for j in range(6) if j not in (i, positive)]
        assert logits[i, 0].item() == pytest.approx(sim[i, positive].item(), abs=1e-6)
        torch.testing.assert_close(logits[i, 1:], sim[i, negatives])
    scaled, _ = info_nce_logits(feats, temperature=0.5)
    torch.testing.assert_close(scaled, logits / 0.5)
    explicit = -torch.stack([sim[i, (i + 3) % 6] - torch.logsumexp(
        sim[i, [j for j in range(6) if j != i]], 0) for i in range(6)]).mean()
    assert F.cross_entropy(logits, labels).item() == pytest.approx(explicit.item(), rel=1e-6)


def test_supcon_matches_explicit_loop():
    feats = F.normalize(torch.randn(3, 2, 4, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 0, 1])
    anchors = torch.cat([feats[:, 0], feats[:, 1]])  # view-major, as the reference
    anchor_labels = labels.repeat(2)
    tau = 0.07
    losses = []
    for a in range(6):
        others = [b for b in range(6) if b != a]
        denom = torch.logsumexp(torch.stack([anchors[a] @ anchors[b] / tau for b in others]), 0)
        positives = [b for b in others if anchor_labels[b] == anchor_labels[a]]
        losses.append(-torch.stack([anchors[a] @ anchors[p] / tau - denom for p in positives]).mean())
    expected = torch.stack(losses).mean()
    assert supcon_loss(feats, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    # without labels only the other view is a positive (SimCLR)
    simclr = supcon_loss(feats, None)
    assert simclr.item() != pytest.approx(expected.item(), rel=1e-3)
    assert supcon_loss(feats, torch.tensor([0, 1, 2])).item() == pytest.approx(simclr.item(), rel=1e-6)


def _batch(b=4, c=3, d=8, k=10):
    gen = torch.Generator().manual_seed(1)
    proj = torch.randn(2 * b, d, generator=gen, requires_grad=True)
    logits = torch.randn(2 * b, c, generator=gen).tanh().requires_grad_(True)
    labels = torch.tensor([0, 2, 1, 0])
    mask = torch.tensor([True, False, True, True])
    reps = torch.randn(2 * b, k, generator=gen, requires_grad=True), torch.randn(2 * b, k, generator=gen)
    return proj, logits, labels, mask, reps


def test_total_loss_combines_terms_with_reference_weights():
    proj, logits, labels, mask, (s_rep, t_rep) = _batch()
    loss = GCDLoss(GCDLossConfig(memax_weight=2.0))
    terms = loss(proj, logits, labels, mask, epoch=3)
    lam = 0.35
    expected = ((1 - lam) * (terms["cluster"] + 2.0 * terms["memax"]) + lam * terms["cls"]
                + (1 - lam) * terms["contrastive"] + lam * terms["supcon"])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert "distill_forward" not in terms
    # L_cls: CE(ℓ/0.1) over the labelled images of view 1 then view 2
    sup_logits = torch.cat([logits[:4][mask], logits[4:][mask]]) / 0.1
    ce = F.cross_entropy(sup_logits, labels[mask].repeat(2))
    assert terms["cls"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert terms["cluster"].item() == pytest.approx(self_distillation_loss(logits, 3).item())

    with_kd = gcd_total_loss(proj, logits, labels, mask, 3, config=loss.config, student_rep=s_rep,
                             teacher_rep=t_rep)
    fwd, rev = distill_kl(s_rep, t_rep)
    assert with_kd["loss"].item() == pytest.approx((terms["loss"] + fwd + rev).item(), rel=1e-6)
    with_kd["loss"].backward()
    assert s_rep.grad is not None and proj.grad is not None and logits.grad is not None
    with pytest.raises(ValueError, match="both"):
        gcd_total_loss(proj, logits, labels, mask, 3, student_rep=s_rep)


def test_total_loss_without_labelled_images_is_finite():
    proj, logits, labels, _, _ = _batch()
    terms = gcd_total_loss(proj, logits, labels, torch.zeros(4, dtype=torch.bool), 0)
    assert terms["cls"].item() == 0.0 and terms["supcon"].item() == 0.0
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="rows"):
        gcd_total_loss(proj[:6], logits[:6], labels, torch.ones(4, dtype=torch.bool), 0)


def _reference_info_nce_logits(features, n_views, temperature):
    """SimGCD's ``info_nce_logits`` (boolean masks), for n_views views."""
    b = features.shape[0] // n_views
    labels = torch.cat([torch.arange(b) for _ in range(n_views)], dim=0)
    labels = (labels.unsqueeze(0) == labels.unsqueeze(1)).float()
    features = F.normalize(features, dim=1)
    similarity_matrix = torch.matmul(features, features.T)
    mask = torch.eye(labels.shape[0], dtype=torch.bool)
    labels = labels[~mask].view(labels.shape[0], -1)
    similarity_matrix = similarity_matrix[~mask].view(similarity_matrix.shape[0], -1)
    positives = similarity_matrix[labels.bool()].view(labels.shape[0], -1)
    negatives = similarity_matrix[~labels.bool()].view(similarity_matrix.shape[0], -1)
    return torch.cat([positives, negatives], dim=1) / temperature


@pytest.mark.parametrize("views", [2, 3])
def test_info_nce_logits_are_the_references_boolean_mask_layout_exactly(views):
    features = torch.randn(5 * views, 8)
    logits, _ = info_nce_logits(features, views, temperature=0.7)
    assert torch.equal(logits, _reference_info_nce_logits(features, views, 0.7))


def test_the_gcd_loss_needs_no_host_sync_given_the_labelled_rows():
    from host_syncs import HostSyncs

    batch, views = 8, 2
    proj = torch.randn(views * batch, 16, requires_grad=True)
    logits = torch.randn(views * batch, 6, requires_grad=True)
    student, teacher = torch.randn(views * batch, 10, requires_grad=True), torch.randn(views * batch, 10)
    labels, labelled = torch.randint(0, 3, (batch,)), torch.rand(batch) < 0.5
    config = GCDLossConfig(memax_weight=1.0)

    def loss(**index):
        return gcd_total_loss(proj, logits, labels, labelled, 0, config=config, student_rep=student,
                              teacher_rep=teacher, **index)["loss"]
    index = labelled.nonzero().squeeze(1)  # on the host, before the batch moves (GCDDataModule)
    with HostSyncs() as syncs:
        fast = loss(labelled_index=index)
        fast.backward()
    assert syncs.ops == []
    with HostSyncs() as syncs:  # the detector does see the mask path
        slow = loss()
    assert syncs.ops and torch.equal(fast, slow)
