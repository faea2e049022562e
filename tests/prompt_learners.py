"""What the prompt-learner tests share: the tiny backbone and a few images (fixtures, registered
by conftest.py), a learner built with its own tiny-tower settings, and learned
tensors moved off their init."""
import pytest
import torch
import torch.nn.functional as F

from clipcore.backbone import load_backbone
from kdpl.prompts import PROMPT_LEARNERS, build_prompt_learner

CLASSNAMES = ["cat", "golden_retriever", "sea lion", "hot-air balloon", "x"]
ALL = sorted(PROMPT_LEARNERS)


@pytest.fixture(scope="module")
def tiny(tiny_clip_config):
    torch.manual_seed(0)
    return load_backbone("tiny", config=tiny_clip_config).freeze().eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def build(name, backbone, classnames=CLASSNAMES, seed=0, **overrides):
    torch.manual_seed(seed)
    # Each learner's own settings for the 2-block tiny towers (deep prompts go 2 deep).
    return build_prompt_learner(name, backbone, classnames, {**PROMPT_LEARNERS[name].tiny_test_settings, **overrides})


def perturb(learner, seed=2):
    """Move every learned tensor away from its init so that equalities are not coincidental."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return learner


def zero_shot_logits(backbone, images, classnames, template="a photo of a {}."):
    with torch.no_grad():
        text = backbone.encode_text(backbone.tokenize([template.format(c.replace("_", " ")) for c in classnames]))
        img = F.normalize(backbone.encode_image(images).float(), dim=-1)
        return backbone.logit_scale.exp() * img @ F.normalize(text.float(), dim=-1).t()


def n_params(module):
    return sum(p.numel() for p in module.parameters())

