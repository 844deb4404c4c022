"""Host <-> device traffic of the batch loop: pinned buffers reused batch after batch, one upload and one
download per batch, ordered by events rather than by host syncs.

:class:`Uploads` stages the model-side uint8 images of a batch (or full-size images of any sizes) into
one of a few reused host buffers (pinned on CUDA) and copies them to the device without blocking.
:meth:`Downloads.download` packs a batch's results (every image's alpha, trimap and flags, or its
decontaminated colours; any sizes, all uint8) into one flat tensor and copies it to a reused host
buffer in one non-blocking copy; :meth:`Download.arrays` waits for that copy (an event, not a sync
per image) and hands back the parts. On the CPU the same steps run without pinning or events, and
give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ben_cli.device import pinned_empty, record_event, wait_event


class _Ring:
    """``slots`` host buffers used in turn, each with the event of the last copy that used it.

    A buffer is reused only once its last copy is done (:func:`ben_cli.device.wait_event`), so a
    caller keeps at most ``slots - 1`` batches in flight without waiting."""

    def __init__(self, device: torch.device, slots: int = 2) -> None:
        self.device = device
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.events: list[torch.cuda.Event | None] = [None] * slots
        self.turn = 0

    def take(self, numel: int, dtype: torch.dtype) -> tuple[int, torch.Tensor]:
        """The next buffer (flat, at least ``numel`` elements of ``dtype``) once its last copy is done."""
        slot, self.turn = self.turn, (self.turn + 1) % len(self.buffers)
        wait_event(self.events[slot])
        self.events[slot] = None
        buffer = self.buffers[slot]
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            buffer = self.buffers[slot] = pinned_empty((numel,), dtype, self.device)
        return slot, buffer[:numel]

    def used(self, slot: int) -> torch.cuda.Event | None:
        """Mark the copy just queued from (or to) ``slot``: its buffer waits for it before reuse."""
        self.events[slot] = record_event(self.device)
        return self.events[slot]


class Uploads:
    """Batches to ``device``: :meth:`upload` (n, S, S, 3) uint8 host images -> the same on the device;
    :meth:`upload_each` arrays of any shapes."""

    def __init__(self, device: torch.device, slots: int = 2) -> None:
        self.device = device
        self._ring = _Ring(device, slots) if device.type == "cuda" else None

    def upload(self, resized: Sequence[np.ndarray]) -> torch.Tensor:
        """(S, S, 3) uint8 images -> (n, S, S, 3) uint8 on the device; on CUDA stacked straight into a
        reused pinned buffer and copied without blocking the host."""
        if self._ring is None:
            return torch.from_numpy(np.stack(resized)).to(self.device)
        shape = (len(resized), *resized[0].shape)
        slot, flat = self._ring.take(int(np.prod(shape)), torch.uint8)
        host = flat.view(shape)
        np.stack(resized, out=host.numpy())
        on_device = host.to(self.device, non_blocking=True)
        self._ring.used(slot)
        return on_device

    def upload_each(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """uint8 host arrays of any shapes -> the same on the device; on CUDA packed into one reused pinned
        buffer and copied in one copy that does not block the host (the CPU: the arrays themselves)."""
        if self._ring is None:
            return [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
        sizes = [a.size for a in arrays]
        slot, flat = self._ring.take(sum(sizes), torch.uint8)
        host, start = flat.numpy(), 0
        for a, n in zip(arrays, sizes):
            host[start : start + n] = a.reshape(-1)
            start += n
        on_device = flat.to(self.device, non_blocking=True)
        self._ring.used(slot)
        return [part.view(a.shape) for part, a in zip(on_device.split(sizes), arrays)]


class Download:
    """One batch's results on their way to the host; :meth:`arrays` waits for them once."""

    def __init__(self, host: torch.Tensor, shapes: Sequence[tuple[int, ...]], event: torch.cuda.Event | None,
                 reused: bool) -> None:
        self._host, self._shapes, self._event, self._reused = host, list(shapes), event, reused

    def arrays(self) -> list[np.ndarray]:
        """The parts as uint8 arrays of their shapes (after the one wait). Copies out of a reused pinned
        buffer, so the arrays outlive the next batch's download."""
        wait_event(self._event)
        flat = self._host.numpy()
        out, start = [], 0
        for shape in self._shapes:
            n = int(np.prod(shape))
            part = flat[start : start + n].reshape(shape)
            out.append(part.copy() if self._reused else part)
            start += n
        return out


class Downloads:
    """Reused host buffers for :meth:`download`, one per batch in flight."""

    def __init__(self, device: torch.device, slots: int = 2) -> None:
        self.device = device
        self._ring = _Ring(device, slots) if device.type == "cuda" else None

    def download(self, parts: Sequence[torch.Tensor]) -> Download:
        """uint8 device tensors of any shapes -> their :class:`Download`: one concatenation on the device and
        one non-blocking copy to the host (on the CPU the concatenation is the host copy)."""
        shapes = [tuple(p.shape) for p in parts]
        flat = torch.cat([p.reshape(-1) for p in parts]) if parts else torch.empty(0, dtype=torch.uint8)
        if self._ring is None:
            return Download(flat.cpu(), shapes, None, reused=False)
        slot, host = self._ring.take(flat.numel(), torch.uint8)
        host.copy_(flat, non_blocking=True)
        return Download(host, shapes, self._ring.used(slot), reused=True)


__all__ = ["Download", "Downloads", "Uploads"]
