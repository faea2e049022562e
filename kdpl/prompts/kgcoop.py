"""KgCoOp: CoOp whose learned class text features are kept near the hand-crafted ones.

Yao, Zhang, Xu, "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization",
CVPR 2023; reference: htyao89/KgCoOp, ``trainers/kgcoop.py``. The prompt is CoOp's (4 context
tokens initialised to "a photo of a", class token last); only the context is learned (the
reference also creates a meta-net, an adapter and bias vectors, all frozen and unused). Training
adds ``weight * (1 - mean_c cos(t_c, t_c^zs))`` to the task loss, where ``t_c`` is the learned
text feature of class c and ``t_c^zs`` the frozen model's feature of the hand-crafted prompt,
both L2-normalised, the mean over the classes the step trains on (all of them with the
supervised objective and KDPL; the selected ones with KDPL-CA). ``weight`` is the reference's
``TRAINER.COOP.W``, 8.0 in the paper's base-to-novel runs.

The hand-crafted prompt is ``prompt.template``; None takes the dataset's template (the
reference's ``CUSTOM_TEMPLATES`` are CoOp's per-dataset prompts, except DTD, for which it uses
"a photo of a {}, a type of texture." where CoOp has "{} texture."; set it to reproduce that).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from kdpl.prompts.base import PromptOutput
from kdpl.prompts.coop import CoOp, CoOpConfig
from kdpl.prompts.registry import register_prompt_learner


@dataclass
class KgCoOpConfig(CoOpConfig):
    # The weight of the knowledge-guided term (reference TRAINER.COOP.W; 8.0 in the paper).
    weight: float = 8.0
    # The hand-crafted prompt of the frozen text features; None: the dataset's template.
    template: Optional[str] = None


@register_prompt_learner("kgcoop", config=KgCoOpConfig)
class KgCoOp(CoOp):
    """Learned: `ctx` `[n_ctx, W]`, as CoOp; the regulariser's targets are a non-persistent buffer
    rebuilt with the class list."""

    def _build_class_buffers(self) -> None:
        super()._build_class_buffers()
        template = self.cfg.template or "a photo of a {}."
        self._set_buffer("zs_text_features", F.normalize(self._frozen_text_features([template]), dim=-1))

    def forward(self, images: Tensor, class_indices: Optional[Tensor] = None) -> PromptOutput:
        output = super().forward(images, class_indices)
        if self.training:
            reference = self.zs_text_features
            if class_indices is not None:
                reference = reference[class_indices.to(reference.device)]
            output.extras["kg_text_features"] = reference
        return output

    def regularization_loss(self, output: PromptOutput) -> tuple[Tensor, dict[str, Tensor]]:
        if "kg_text_features" not in output.extras:
            raise ValueError("KgCoOp.regularization_loss needs the frozen text features that forward() adds "
                             "in training mode (call learner.train() first)")
        # The reference's eps (CosineSimilarity(dim=1, eps=1e-07)); both sides are unit vectors.
        cos = F.cosine_similarity(output.text_features.float(), output.extras["kg_text_features"].float(),
                                  dim=1, eps=1e-7)
        score = 1.0 - cos.mean()
        return self.cfg.weight * score, {"kg_score": score.detach()}
