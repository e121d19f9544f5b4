"""Sample readers: decode one sample at a time, inside whichever process asks for it.

A reader knows how many samples there are, their shape after resizing, and how to produce
sample ``i`` as a (C, H, W) array: uint8 for images read from files (kept compact until
the batch reaches the device), float32 in [0, 1] for the embedded in-memory datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from rigor.errors import UsageError


class BadSample(UsageError):
    """A sample that cannot be read (unreadable, truncated, wrong size): exit 2, or skipped.

    Raised inside a DataLoader worker, PyTorch re-raises it in the main process as
    ``BadSample("Caught BadSample in DataLoader worker ... Traceback ...")``; the original
    one-line message is recovered from the traceback's last line so the user sees it alone.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught BadSample"):
            last = message.strip().splitlines()[-1]
            message = last.split("BadSample: ", 1)[-1]
        super().__init__(message)


class SampleReader(Protocol):
    """What a dataset needs from its storage."""

    shape: tuple[int, int, int]
    dtype: str

    def __len__(self) -> int:
        """Number of samples."""
        ...

    def load(self, index: int) -> np.ndarray:
        """Sample ``index`` as a (C, H, W) array of ``dtype``; raises BadSample."""
        ...


@dataclass(frozen=True)
class ImageRef:
    """One image file and where it was listed (for error messages)."""

    path: Path
    where: str


def _functional(version: str) -> Any:
    if version == "v2":
        from torchvision.transforms.v2 import functional
    else:
        from torchvision.transforms import functional
    return functional


def resize_tensor(image: torch.Tensor, size: tuple[int, int], version: str) -> torch.Tensor:
    """Antialiased bilinear resize of a (C, H, W) or (N, C, H, W) tensor (uint8 or float)."""
    return _functional(version).resize(image, list(size), antialias=True)


def decode_file(ref: ImageRef, channels: int) -> np.ndarray:
    """Decode one image file to (C, H, W) uint8, grey or RGB; BadSample names the file."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(ref.path) as image:
            array = np.array(image.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise BadSample(f"{ref.where}: unreadable image {ref.path}: {reason}") from None
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def probe_size(ref: ImageRef) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(ref.path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as err:
        raise BadSample(f"{ref.where}: unreadable image {ref.path}: {err}") from None
    return height, width


class FileReader:
    """Images on disk, decoded with PIL and resized once to ``size``; uint8 samples.

    Without a configured size every image must have the first one's size (checked as each
    is read: a different one is a bad sample that names ``data.transforms.image_size``).
    """

    dtype = "uint8"

    def __init__(
        self,
        refs: Sequence[ImageRef],
        size: tuple[int, int] | None,
        channels: int,
        version: str,
    ) -> None:
        self.refs = list(refs)
        self.resize = size is not None
        height, width = size if size is not None else probe_size(self.refs[0])
        self.shape = (channels, height, width)
        self.version = version

    def __len__(self) -> int:
        return len(self.refs)

    def load(self, index: int) -> np.ndarray:
        """Decode, then resize when the configured size differs."""
        ref = self.refs[index]
        array = decode_file(ref, self.shape[0])
        if array.shape == self.shape:
            return array
        if not self.resize:
            raise BadSample(
                f"{ref.where}: image {ref.path} is {array.shape[1]}x{array.shape[2]}, the first "
                f"was {self.shape[1]}x{self.shape[2]}; set data.transforms.image_size to resize"
            )
        resized = resize_tensor(torch.from_numpy(array), self.shape[1:], self.version)
        return np.asarray(resized.numpy())

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from, for the manifest's list of skipped samples."""
        return str(self.refs[index].path)


RESIDENT_BYTES = 256 << 20  # resized in-memory datasets up to this size are resized once


class ArrayReader:
    """An embedded dataset already in memory as float32 (N, C, H, W) in [0, 1] (digits,
    generated tiles): the same reader interface. With a configured size, every sample is
    resized once up front when the resized array takes at most ``RESIDENT_BYTES`` (each
    sample through the same call as a per-read resize: the same values), else each time it
    is read; the original array is kept either way."""

    dtype = "float32"

    def __init__(self, images: np.ndarray, size: tuple[int, int] | None, version: str) -> None:
        self.images = images
        self.version = version
        native = (int(images.shape[2]), int(images.shape[3]))
        self.size = size if size is not None and size != native else None
        height, width = self.size or native
        self.shape = (int(images.shape[1]), height, width)
        if self.size is not None and len(images) * int(np.prod(self.shape)) * 4 <= RESIDENT_BYTES:
            self.images = np.stack([self.load(index) for index in range(len(images))])
            self.size = None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> np.ndarray:
        """The stored sample, resized (antialiased bilinear) when a size was configured."""
        image = self.images[index]
        if self.size is None:
            return image
        return np.asarray(resize_tensor(torch.from_numpy(image), self.size, self.version).numpy())

    def load_many(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The stored samples of ``rows`` (int64) as one (N, C, H, W) tensor in a single
        gather; None when samples are resized (each is then read on its own)."""
        if self.size is not None:
            return None
        # index_select writes a fresh tensor with the plain contiguous strides, even on the
        # size-1 channel axis (a view keeps the source's, which can be 0 there, and a conv
        # on such a tensor takes another kernel whose results differ in the last bits).
        return torch.from_numpy(self.images).index_select(0, rows)

    def describe(self, index: int) -> str:
        """Sample ``index``'s position in the embedded array."""
        return f"row {index}"
