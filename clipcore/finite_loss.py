"""Stop a run at a non-finite training loss without reading the device every step.

`if not torch.isfinite(loss)` in the step makes the host wait for the GPU at every step (and
keeps the step out of CUDA graphs). Instead each step records, on the device, the first step
whose loss was not finite (`record`: no read), and `check` reads that one number: the module
checks as often as metrics are logged (which reads the device anyway), before every checkpoint
is written (so no checkpoint holds weights updated from a non-finite loss), and at each epoch's
end. The error names the step where the loss first went bad and that step's loss parts.
"""
from __future__ import annotations

from typing import Optional

import torch

from clipcore.errors import NonFiniteLossError


class NonFiniteLossWatch:
    def __init__(self):
        self._first_bad: Optional[torch.Tensor] = None  # device scalar: first bad step, or -1
        # The steps recorded since the last check (epoch, step, loss, parts), to name the bad one.
        self._recent: list[tuple[int, int, torch.Tensor, dict[str, torch.Tensor]]] = []

    def record(self, loss: torch.Tensor, step: int, epoch: int, parts: dict[str, torch.Tensor]) -> None:
        loss = loss.detach()
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, step, self._first_bad)
        self._recent.append((epoch, step, loss, {k: v.detach() for k, v in parts.items()}))

    def check(self) -> None:
        """Raise `NonFiniteLossError` if a recorded loss was not finite (one device read)."""
        if self._first_bad is None or not self._recent:
            return
        first_bad = int(self._first_bad)
        if first_bad < 0:
            self._recent.clear()
            return
        epoch, step, loss, parts = next(r for r in self._recent if r[1] == first_bad)
        values = {k: float(v) for k, v in parts.items() if v.numel() == 1}
        raise NonFiniteLossError(f"non-finite training loss ({float(loss)}) at epoch {epoch}, step {step}; "
                                 f"its logged parts: {values}")
