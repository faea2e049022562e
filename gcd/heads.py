"""SimGCD's `DINOHead` and SpectralGCD's concept projection `ln_t` (spectralgcd.md §3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# State-dict names of the last layer's weight-norm factors: reference (torch.nn.utils.weight_norm)
# vs torch.nn.utils.parametrizations.weight_norm, used here.
_REFERENCE_TO_PARAMETRIZED = {
    "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
    "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
}


class DINOHead(nn.Module):
    """Projection MLP for the contrastive losses plus a cosine classifier.

    `forward(x) -> (mlp(x) [.., bottleneck_dim], last_layer(normalize(x)) [.., out_dim])`.
    As in the reference, the classifier reads the L2-normalised *input* (not the bottleneck).
    `last_layer` is weight-normalised with every row's norm g fixed to 1 (frozen), so the
    logits are cosines in [-1, 1] between x and the `out_dim` prototypes (rows of v).
    """

    def __init__(self, in_dim: int, out_dim: int, nlayers: int = 3, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        # Initialised before last_layer exists, as in the reference: the prototypes keep
        # nn.Linear's default (Kaiming-uniform) initialisation.
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(in_dim, out_dim, bias=False), dim=0)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(False)
        self._register_load_state_dict_pre_hook(self._accept_reference_keys)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def weight_g(self) -> torch.Tensor:
        """Per-prototype norms `[out_dim, 1]` (frozen at 1)."""
        return self.last_layer.parametrizations.weight.original0

    @property
    def weight_v(self) -> torch.Tensor:
        """Unnormalised prototypes `[out_dim, in_dim]` (the trained parameter)."""
        return self.last_layer.parametrizations.weight.original1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projection = self.mlp(x)
        logits = self.last_layer(F.normalize(x, dim=-1, p=2))
        return projection, logits

    @staticmethod
    def _accept_reference_keys(state_dict, prefix, *args) -> None:
        """Load-state-dict pre-hook: rename the reference's `last_layer.weight_g/_v` keys (also
        when this head is a submodule of the module being loaded)."""
        for reference_key, key in _REFERENCE_TO_PARAMETRIZED.items():
            if prefix + reference_key in state_dict:
                state_dict[prefix + key] = state_dict.pop(prefix + reference_key)


class ConceptProjection(nn.Linear):
    """SpectralGCD's `ln_t`: concept-similarity vector `[.., K]` -> head input `[.., 768]`.

    A plain `nn.Linear(K, out_dim, bias=True)` with PyTorch's default initialisation; the
    subclass only names the role and the argument order.
    """

    def __init__(self, num_concepts: int, out_dim: int = 768):
        super().__init__(num_concepts, out_dim, bias=True)
        self.num_concepts = num_concepts
