"""``torch.save``'s bytes, pickled without its per-object Python hook.

``torch.save`` pickles with a ``persistent_id`` method that the pickler calls for every
object it meets (1,350 times for a digits checkpoint: every dict, string, number and each
tensor's size tuple), and each call asks whether the object is a storage. That is most of
the 3.1-3.4 ms of CPU a digits checkpoint costs (1.4 ms here), on the run writer's
thread, while the next epoch trains on the same two cores. :func:`save_state` writes the
same archive, byte for byte: the same records in the same order through torch's own zip
writer, and a pickle whose opcodes are torch's. Tensors are reduced (by
``reducer_override``, which the pickler does not call for builtin types) to what
``Tensor.__reduce_ex__`` returns for a plain dense CPU tensor, with a marker in place of
the storage, and the persistent-id hook only recognises that marker. Anything else (a
tensor subclass, a GPU, sparse, quantized or conjugated tensor, a dtype of the newer
storage format, a tensor that requires grad, or a torch without these internals) is
written by ``torch.save`` itself. The test suite checks the bytes against
``torch.save``'s, so a torch release that changes its format is noticed.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import torch

try:  # torch internals that torch.save uses; without them, torch.save does the work
    from torch._C import PyTorchFileWriter
    from torch._utils import _rebuild_tensor_v2
    from torch.serialization import _get_storage_alignment
    from torch.storage import _dtype_to_storage_type_map, _new_dtypes

    # What the alignment's getter reads, imported here rather than during the first
    # epoch's checkpoint (0.8 ms).
    from torch.utils.serialization import config as _config  # noqa: F401

    _get_tensor_metadata = torch._C._get_tensor_metadata  # type: ignore[attr-defined]

    _STORAGE_TYPES: dict[torch.dtype, Any] = {
        dtype: getattr(torch, name)
        for dtype, name in _dtype_to_storage_type_map().items()
        if dtype not in _new_dtypes() and hasattr(torch, name)
    }
except (ImportError, AttributeError):  # pragma: no cover - a torch without them
    _STORAGE_TYPES = {}

PICKLE_PROTOCOL = 2  # torch.save's default
_CRC_OPTION = threading.Lock()  # torch's CRC32 switch is process-wide


class _Unsupported(Exception):
    """A tensor the fast path does not write exactly as torch.save would."""


class NeedsCopy(Exception):
    """``save_state(..., own_storages=True)`` met a tensor only ``torch.save`` writes: copy
    the state (the copies have their own storages) and save the copy instead."""


class _Storage:
    """Stands for a tensor's storage in the pickle: written as its persistent id."""

    __slots__ = ("pid",)

    def __init__(self, pid: tuple[Any, ...]) -> None:
        self.pid = pid


class _Pickler(pickle.Pickler):
    """Pickles like torch.save's pickler; ``reduce`` takes the tensors."""

    def __init__(self, file: Any, reduce: Callable[[torch.Tensor], Any]) -> None:
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self._reduce = reduce

    def persistent_id(self, obj: Any) -> Any:  # called for every object: kept to a test
        return obj.pid if type(obj) is _Storage else None

    def reducer_override(self, obj: Any) -> Any:  # not called for builtin types
        if type(obj) is torch.Tensor:
            return self._reduce(obj)
        if isinstance(obj, torch.Tensor | torch.storage.TypedStorage | torch.UntypedStorage):
            raise _Unsupported  # a subclass, or a storage: reduced their own ways
        return NotImplemented


def save_state(state: Any, handle: Any, crc32: bool = False, own_storages: bool = False) -> None:
    """Write ``state`` to the open binary ``handle`` as ``torch.save`` would with its zip
    records' CRC32s on or off (``crc32``), byte for byte.

    ``own_storages``: write what ``torch.save`` writes for the same state with every tensor
    cloned (``tensor.clone()``: a storage of its own holding just its elements), without
    cloning the tensors that already have such a storage; the caller gives each occurrence
    of a tensor its own object (``detach()``), as clones are. Raises :class:`NeedsCopy`
    instead of handing a tensor to ``torch.save``."""
    storages: dict[str, torch.UntypedStorage] = {}
    try:
        data = _pickled(state, storages, own_storages)
    except _Unsupported:
        if own_storages:
            raise NeedsCopy from None
        _torch_save(state, handle, crc32)
        return
    alignment = _get_storage_alignment()
    writer = PyTorchFileWriter(handle, crc32, alignment)
    writer.write_record("data.pkl", data, len(data))
    for name, text in (
        (".format_version", b"1"),
        (".storage_alignment", str(alignment).encode()),
        ("byteorder", sys.byteorder.encode()),
    ):
        writer.write_record(name, text, len(text))
    for key, storage in storages.items():
        writer.write_record(f"data/{key}", cast(Any, storage), storage.nbytes())
    writer.write_end_of_file()
    handle.flush()


def _pickled(
    state: Any, storages: dict[str, torch.UntypedStorage], own_storages: bool = False
) -> bytes:
    """The pickle of ``state`` as torch.save's data.pkl; ``storages`` gets each storage under
    its key ('0', '1', ... in the order first met; tensors that share one share its key,
    unless ``own_storages``: see :func:`save_state`)."""
    if not _STORAGE_TYPES:
        raise _Unsupported
    keys: dict[int, str] = {}
    dtypes: dict[str, torch.dtype] = {}

    def reduce(tensor: torch.Tensor) -> tuple[Callable[..., torch.Tensor], tuple[Any, ...]]:
        if (
            tensor.device.type != "cpu"
            or tensor.layout is not torch.strided
            or tensor.dtype not in _STORAGE_TYPES
            or tensor.is_quantized
            or tensor.is_nested
            or tensor.requires_grad
            or tensor.__dict__
            or _get_tensor_metadata(tensor)  # the conjugate or negative bit
        ):
            raise _Unsupported
        storage = tensor.untyped_storage()
        if own_storages:
            if not (
                tensor.is_contiguous()  # then a clone keeps its strides
                and tensor.storage_offset() == 0
                and storage.nbytes() == tensor.nbytes
            ):
                tensor = tensor.clone()
                storage = tensor.untyped_storage()
            key = str(len(storages))  # a storage per occurrence, numbered in order
        else:
            key = keys.setdefault(storage._cdata, str(len(keys)))  # as torch.save numbers them
        if dtypes.setdefault(key, tensor.dtype) != tensor.dtype:
            raise _Unsupported  # one storage viewed as two dtypes: torch.save refuses it
        storages[key] = storage
        numel = storage.nbytes() // tensor.element_size()
        pid = ("storage", _STORAGE_TYPES[tensor.dtype], key, "cpu", numel)
        args = (tensor.storage_offset(), tuple(tensor.size()), tensor.stride(), False)
        return _rebuild_tensor_v2, (_Storage(pid), *args, OrderedDict())

    buffer = io.BytesIO()
    _Pickler(buffer, reduce).dump(state)
    return buffer.getvalue()


def _torch_save(state: Any, handle: Any, crc32: bool) -> None:
    with _CRC_OPTION:
        before = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(crc32)
        try:
            torch.save(state, handle)
        finally:
            torch.serialization.set_crc32_options(before)
