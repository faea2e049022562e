"""``trainer.compile``: the towers' residual blocks compiled in place train as the eager ones do.

Run with the ``aot_eager`` backend (dynamo's graph capture and AOT autograd, no code generation:
seconds on a CPU, no compiler needed); ``inductor``, the default and what a GPU run uses, once
(CoOp+KDPL, marked slow: it generates and compiles C++ for the CPU, ~20 s per block shape).
"""
from __future__ import annotations

import pytest
import torch
from gcd_layouts import write_dictionary, write_gcd_image_folder
from training_helpers import (
    CONFIG_DIR,
    gcd_overrides,
    prompt_method_files,
    prompt_overrides,
    tiny_dataset,
    write_class_dictionary,
)

from clipcore import runner
from clipcore.config import load_config
from clipdistill.app import register_methods

register_methods()


def _learned(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


# coop+kdpl@bf16: under bf16-mixed the frozen towers' matmul weights are swapped for bf16 copies
# during each step (and back outside it): the compiled blocks must see the copies, not stale fp32.
@pytest.mark.parametrize("cell", ["coop+kdpl", "coop+kdpl@bf16", "maple+kdpl", "spectralgcd",
                                  pytest.param("coop+kdpl@inductor", marks=pytest.mark.slow)])
def test_compiled_blocks_train_as_the_eager_ones(cell, tmp_path, monkeypatch):
    cell, _, variant = cell.partition("@")
    precision = variant == "bf16"
    backend = "inductor" if variant == "inductor" else "aot_eager"
    compiled_blocks, modules = [], []
    build = runner.build_method

    def spy(cfg):
        module, datamodule = build(cfg)
        modules.append(module)
        compile_blocks = module.compile_blocks
        module.compile_blocks = lambda backend: compiled_blocks.append(backend) or compile_blocks(backend)
        return module, datamodule
    monkeypatch.setattr(runner, "build_method", spy)

    def train(compile: bool):
        settings = {"trainer__compile": compile, "trainer__compile_backend": backend}
        if precision:
            settings["trainer__precision"] = "bf16-mixed"
        out = tmp_path / str(compile)
        if cell == "spectralgcd":
            return runner.train(load_config([CONFIG_DIR / "method" / "spectralgcd.yaml"], gcd_overrides(
                out, write_gcd_image_folder(tmp_path / "gcd"), write_dictionary(tmp_path / "c.csv"), **settings)))
        learner, objective = cell.split("+")
        return runner.train(load_config(prompt_method_files(learner, objective), prompt_overrides(
            tiny_dataset(tmp_path / "data"), out, write_class_dictionary(tmp_path / "dict.csv"), tmp_path / "cache",
            learner, objective, **settings)))
    eager = _learned(train(False))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = _learned(train(True))
    assert compiled_blocks == [backend]
    assert (modules[-1]._compute_copies is not None) == precision  # the bf16 copies were in use
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the blocks ran as graphs
    assert eager.keys() == compiled.keys() and eager
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=0, atol=1e-5, msg=key)


def test_every_residual_block_of_both_towers_is_compiled_in_place():
    from training_helpers import TINY

    from clipcore.backbone import load_backbone

    backbone = load_backbone("tiny", None, config=str(TINY))
    keys = list(backbone.state_dict())
    count = backbone.compile_blocks("aot_eager")
    blocks = list(backbone.text_blocks) + list(backbone.vision_blocks)
    assert count == len(blocks) and all(b._compiled_call_impl is not None for b in blocks)
    assert list(backbone.state_dict()) == keys  # checkpoints and fingerprints see the same tensors
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        compiled = backbone.encode_image_blocks(images)
        torch._dynamo.reset()
        for block in blocks:
            block._compiled_call_impl = None
        torch.testing.assert_close(compiled, backbone.encode_image_blocks(images), rtol=0, atol=1e-6)
