"""The text tower at its floor: prompts grouped by length, their shared prefix encoded once, the
same logits and gradients as every prompt padded to the longest, and no host read in the step."""
import pytest
import torch
from prompt_learners import ALL, CLASSNAMES, build, perturb

from clipcore.backbone import load_backbone


@pytest.mark.parametrize("name", ["coop", "cocoop", "maple", "promptsrc"])
def test_untruncated_text_tower_gives_the_same_logits(tiny, images, name):
    """`truncate_text=False` (the reference's full-context text tower, used by the benchmark)
    runs every token yet pools the same features: the causal mask hides what truncation drops."""
    learner = perturb(build(name, tiny))
    idx = torch.tensor([3, 0, 4])
    cut = learner(images, class_indices=idx).logits
    learner.truncate_text = False
    full = learner(images, class_indices=idx).logits
    assert learner._selected_tokens(idx)[0].shape[1] == tiny.context_length
    torch.testing.assert_close(full, cut, rtol=1e-4, atol=1e-4)


FLOOR_CASES = [(n, {}) for n in ALL] + [
    ("coop", {"class_token_position": "middle"}), ("coop", {"class_token_position": "front"}),
    ("coop", {"class_specific": True}), ("cocoop", {"text_chunk_size": 4})]
TEXT_LEARNERS = sorted(set(ALL) - {"vpt", "clip_lora"})  # VPT's text is fixed; CLIP-LoRA's is padded


def _step(learner, images, idx):
    out = learner(images, class_indices=idx)
    (out.logits.square().mean() + learner.regularization_loss(out)[0]).backward()
    return out.logits.detach(), {k: p.grad for k, p in learner.named_parameters()}


@pytest.mark.parametrize("selected", [False, True], ids=["all-classes", "selected"])
@pytest.mark.parametrize("name,cfg", FLOOR_CASES, ids=[f"{n}{cfg or ''}" for n, cfg in FLOOR_CASES])
def test_text_at_its_floor_gives_the_padded_logits_and_gradients(tiny, images, name, cfg, selected):
    """Prompts grouped by length with the prefix they share encoded once (the default) give the
    logits and gradients of every prompt padded to the longest (`bucket_text=False`)."""
    idx = torch.tensor([3, 0, 4]) if selected else None

    def run(bucket_text):
        learner = perturb(build(name, tiny, **cfg)).train()
        learner.bucket_text = bucket_text
        return _step(learner, images, idx)

    (floor, floor_grads), (padded, padded_grads) = run(True), run(False)
    torch.testing.assert_close(floor, padded, rtol=1e-5, atol=1e-5)
    for key, grad in padded_grads.items():
        torch.testing.assert_close(floor_grads[key], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))


@pytest.mark.parametrize("name", TEXT_LEARNERS)
def test_text_at_its_floor_runs_fewer_flops(tiny, images, name):
    """The floor path is really taken (not silently padded): fewer FLOPs for the same logits."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for bucket in (True, False):
        learner = perturb(build(name, tiny)).eval()
        learner.bucket_text = bucket
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            learner.encode_class_text(None) if name != "cocoop" else learner(images)
        counts.append(counter.get_total_flops())
    assert counts[0] < 0.9 * counts[1]


@pytest.mark.parametrize("name,cfg,classnames,expected", [
    ("coop", {}, CLASSNAMES, 5),  # SOT + the 4 context vectors ("a photo of a")
    ("coop", {"ctx_init": None, "n_ctx": 3}, CLASSNAMES, 4),
    ("coop", {}, ["golden retriever", "golden eagle"], 6),  # the common first word too
    ("coop", {}, ["cat"], 7),  # one class: everything but its EOT
    ("coop", {"class_token_position": "middle"}, CLASSNAMES, 3),  # SOT + ctx[:2], then the name
    ("coop", {"class_token_position": "front"}, CLASSNAMES, 1),
    ("coop", {"class_specific": True}, CLASSNAMES, 1),  # every class has its own context
    ("maple", {}, CLASSNAMES, 5),  # SOT + 2 context vectors + the frozen "of a"
    ("cocoop", {}, CLASSNAMES, 5),  # per image (its context), shared by its classes
])
def test_the_shared_prefix_is_what_every_prompt_has_in_common(tiny, images, name, cfg, classnames, expected):
    learner = perturb(build(name, tiny, classnames, **cfg))
    assert learner._prompt_layout(None).prefix == expected
    floor = learner(images).logits
    learner.bucket_text = False
    torch.testing.assert_close(floor, learner(images).logits, rtol=1e-5, atol=1e-5)


def test_buckets_group_prompts_by_length_and_restore_the_class_order(tiny):
    learner = build("coop", tiny)
    learner.max_text_buckets = 10  # one bucket per length
    eot = learner.prompt_eot.tolist()
    layout = learner._prompt_layout(torch.tensor([4, 1, 0, 2]))
    assert list(layout.lengths) == sorted({eot[i] + 1 for i in (4, 1, 0, 2)})
    assert sum(layout.counts) == 4
    selected_eot = torch.tensor([eot[i] for i in (4, 1, 0, 2)])
    assert (selected_eot[layout.order] + 1).tolist() == [n for n, c in zip(layout.lengths, layout.counts)
                                                        for _ in range(c)]
    assert (layout.order[layout.inverse] == torch.arange(4)).all()


def test_lengths_are_merged_into_the_buckets_that_pad_the_fewest_tokens():
    """Prompts of 8, 8, 9, 9, 11, 13 tokens after a prefix of 5, in at most 2 buckets: {8, 9} and
    {11, 13} encode (9-5)x4 + (13-5)x2 = 32 tokens; {8} {9, 11, 13} 38, {8, 9, 11} {13} 38."""
    from kdpl.prompts.layout import length_buckets

    eot = torch.tensor([7, 8, 10, 7, 12, 8])  # lengths 8, 9, 11, 8, 13, 9
    lengths, counts, order = length_buckets(eot, prefix=5, max_buckets=2)
    assert (lengths, counts) == ((9, 13), (4, 2))
    assert order.tolist() == [0, 3, 1, 5, 2, 4]
    assert length_buckets(eot, prefix=5, max_buckets=1)[:2] == ((13,), (6,))
    assert length_buckets(eot, prefix=5, max_buckets=8)[:2] == ((8, 9, 11, 13), (2, 2, 1, 1))


@pytest.mark.parametrize("name", ALL)
def test_a_step_over_the_whole_class_list_never_reads_the_device(tiny_clip_config, name):
    """On the meta device tensors have no values, so any host read (int(), .item(), .tolist(), a
    value-dependent shape) raises: forward and backward there prove the step has no host sync
    (what they need is computed on the host when the class list is set)."""
    with torch.device("meta"):
        backbone = load_backbone("tiny-meta", config=tiny_clip_config, device="meta")
    learner = build(name, backbone.freeze().eval()).train()
    out = learner(torch.randn(2, 3, 32, 32, device="meta"))
    (out.logits.logsumexp(-1).mean() + learner.regularization_loss(out)[0]).backward()
    assert out.logits.shape == (2, len(CLASSNAMES)) and out.logits.device.type == "meta"
