"""DINOHead (SimGCD) and the concept projection ln_t."""
import pytest
import torch
import torch.nn.functional as F

from gcd.heads import ConceptProjection, DINOHead


@pytest.fixture
def head():
    torch.manual_seed(0)
    return DINOHead(in_dim=32, out_dim=7, hidden_dim=64, bottleneck_dim=16)


def test_shapes_and_layers(head):
    projection, logits = head(torch.randn(5, 32))
    assert projection.shape == (5, 16) and logits.shape == (5, 7)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 64), (64, 16)]
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    assert DINOHead(32, 7, nlayers=1, bottleneck_dim=16).mlp.weight.shape == (16, 32)


def test_mlp_init_is_truncated_normal_std_002():
    torch.manual_seed(0)
    weight = DINOHead(256, 3, hidden_dim=512).mlp[0].weight
    assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert weight.abs().max().item() <= 2.0  # trunc_normal_'s default cut at +-2


def test_weight_g_is_frozen_at_one(head):
    assert head.weight_g.shape == (7, 1)
    assert torch.equal(head.weight_g, torch.ones(7, 1)) and not head.weight_g.requires_grad
    _, logits = head(torch.randn(4, 32))
    logits.sum().backward()
    assert head.weight_g.grad is None and head.weight_v.grad is not None
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "last_layer.parametrizations.weight.original1" in trainable
    assert "last_layer.parametrizations.weight.original0" not in trainable


def test_logits_are_cosines_of_input_and_prototypes(head):
    x = torch.randn(6, 32) * 10
    _, logits = head(x)
    expected = F.normalize(x, dim=-1) @ F.normalize(head.weight_v, dim=-1).T
    torch.testing.assert_close(logits, expected)
    assert logits.abs().max() <= 1 + 1e-6
    # a prototype row as input gives cosine 1 with itself
    _, own = head(head.weight_v[2:3].detach() * 3)
    assert own[0, 2].item() == pytest.approx(1.0, abs=1e-6)
    # the classifier reads x, not the bottleneck: changing the MLP leaves logits unchanged
    with torch.no_grad():
        head.mlp[0].weight.add_(1.0)
    torch.testing.assert_close(head(x)[1], logits)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_loads_reference_weight_norm_keys(head):
    reference = torch.nn.utils.weight_norm(torch.nn.Linear(32, 7, bias=False))
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("last_layer")}
    state["last_layer.weight_g"] = torch.ones(7, 1)
    state["last_layer.weight_v"] = reference.weight_v.detach().clone()
    container = torch.nn.ModuleDict({"proj": head})
    container.load_state_dict({f"proj.{k}": v for k, v in state.items()})
    torch.testing.assert_close(head.weight_v, reference.weight_v)
    assert not head.weight_g.requires_grad


def test_concept_projection():
    torch.manual_seed(0)
    ln_t = ConceptProjection(50)
    assert ln_t.weight.shape == (768, 50) and ln_t.bias.shape == (768,)
    assert ln_t(torch.randn(3, 50)).shape == (3, 768)
