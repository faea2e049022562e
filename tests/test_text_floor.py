"""The FLOP benchmark of the text tower's floor (benchmarks/flops_text_floor.py) on the tiny CLIP:
its hand count equals what FlopCounterMode counts for padded prompts, and the learners' text
encoding is within 5% of the floor it defines (the benchmark runs the same at real sizes)."""
import pytest
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops_text_floor import floor_text_flops, padded_sequences, text_tower_flops
from clipcore.backbone import load_backbone
from kdpl.prompts import PROMPT_LEARNERS, build_prompt_learner

CLASSNAMES = ["cat", "golden retriever", "sea lion", "hot-air balloon", "x", "a rather long class name indeed"]


@pytest.fixture(scope="module")
def tiny(tiny_clip_config):
    # On the meta device, as the benchmark counts: on a CPU, small heads take a fused attention
    # kernel that FlopCounterMode does not count.
    return load_backbone("tiny", config=tiny_clip_config, device="meta").freeze().eval()


def text_flops(learner, n_images):
    """Counted FLOPs of the learner's text encoding, forward and backward, for one prefix group
    per image (CoCoOp) or one in all."""
    ctx = learner.ctx if n_images == 1 else learner.ctx.expand(n_images, 1, -1, -1)
    with FlopCounterMode(display=False) as counter:
        prompts = learner._assemble(ctx, None)
        learner._encode_prompts(prompts).square().sum().backward()
    return counter.get_total_flops(), prompts


@pytest.mark.parametrize("name,n_images", [("coop", 1), ("cocoop", 3)])
def test_the_floor_count_is_exact_for_padded_prompts_and_met_by_the_learners(tiny, name, n_images):
    learner = build_prompt_learner(name, tiny, CLASSNAMES, PROMPT_LEARNERS[name].tiny_test_settings)
    learner.bucket_text = False
    padded, prompts = text_flops(learner, n_images)
    rows = n_images * len(CLASSNAMES)
    assert padded == text_tower_flops(tiny, padded_sequences(prompts.layout, n_images), rows, dense=True)
    learner.bucket_text = True
    now, _ = text_flops(learner, n_images)
    # The EOT positions from the host (the learner's buffers live on the meta device here).
    eot = tiny.eot_index(tiny.tokenize([f"{learner.prompt_prefix} {c}." for c in learner.classnames]))
    floor = floor_text_flops(tiny, prompts.layout.prefix, eot, n_images)
    assert floor <= now <= 1.05 * floor
    assert now < 0.8 * padded
