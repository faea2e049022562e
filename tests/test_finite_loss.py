"""clipcore.finite_loss: a non-finite loss is recorded without a device read and named at the check."""
import pytest
import torch

from clipcore.errors import NonFiniteLossError
from clipcore.finite_loss import NonFiniteLossWatch


def test_recording_never_reads_the_device_and_the_check_does():
    """Meta tensors have no values: any host read of them raises."""
    watch = NonFiniteLossWatch()
    for step in range(3):
        watch.record(torch.empty((), device="meta"), step, 0, {"train/ce": torch.empty((), device="meta")})
    with pytest.raises(Exception, match="meta"):
        watch.check()


def test_the_first_bad_step_is_named_with_its_parts_after_later_good_steps():
    watch = NonFiniteLossWatch()
    for step in range(3):
        watch.record(torch.tensor(1.0), step, 0, {"train/ce": torch.tensor(1.0)})
    watch.check()  # all finite: nothing raised, and the window is cleared
    assert watch._recent == []
    losses = [2.0, float("inf"), float("nan"), 3.0]
    for step, value in enumerate(losses, start=3):
        watch.record(torch.tensor(value), step, 1, {"train/ce": torch.tensor(value), "train/kl": torch.tensor(0.5)})
    with pytest.raises(NonFiniteLossError, match=r"\(inf\) at epoch 1, step 4; .*'train/ce': inf, 'train/kl': 0.5"):
        watch.check()
