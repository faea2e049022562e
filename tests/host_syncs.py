"""Record the operations that make the host wait for a CUDA device, on any device (the CPU here).

On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` finds them; without one, the same ops are
seen in the dispatcher: reading a value (``.item()``, ``int()``, ``bool()``, ``if tensor:``,
``.tolist()``, ``.numpy()``), and every op whose output size depends on the data (boolean-mask
indexing, ``nonzero``, ``masked_select``, ``unique``, ``bincount``).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
DATA_DEPENDENT = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
                  aten.is_nonzero.default, aten._unique2.default, aten.unique_dim.default,
                  aten.unique_consecutive.default, aten.bincount.default}
# Host reads that bypass the dispatcher on a CPU tensor (they copy a device tensor to the host).
HOST_READS = ("tolist", "numpy")


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as syncs: ...``; ``syncs.ops`` lists what would have synchronised."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self._originals = {}

    def __enter__(self):
        for name in HOST_READS:
            original = self._originals[name] = getattr(torch.Tensor, name)

            def read(tensor, *args, _name=name, _original=original, **kwargs):
                self.ops.append(f"Tensor.{_name}")
                return _original(tensor, *args, **kwargs)
            setattr(torch.Tensor, name, read)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if func in DATA_DEPENDENT:
            self.ops.append(str(func))
        elif packet in (aten.index, aten.index_put, aten.index_put_) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])):
            self.ops.append(f"{func} with a boolean mask")
        return func(*args, **kwargs)
