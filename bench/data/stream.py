"""Where the Trainer's training images live, and how each batch of them reaches the training device.

Pre-training images are the labelled ``train_x`` followed by ``unlabeled_x`` (STL-10), index i < len(train_x)
being a labelled image; unlabeled images have label -1. A method that reads labels (``uses_labels``) gets the
labelled ones only. Two sources, one interface (``len``, ``labels``, ``gather(idx)``, ``batches(order, ...)``):

- ``Resident``: every image copied to the device once and each batch gathered there by index (in-memory data;
  on a CPU the tensors are used where they are).
- ``Streamed``: the images stay on the host, and a background thread gathers each batch's indices in sorted order
  (sequential reads of a memory-mapped file), into pinned memory when the device is a GPU, copies it
  ``non_blocking`` on its own CUDA stream, and stays up to ``AHEAD`` batches ahead of the loop; the batch is put
  back in the epoch's order on the device. Used when the images are memory-mapped (a prepared store) or larger
  than ``DEVICE_SHARE`` of the GPU's memory (the rest is for the model, activations and augmentation).

Both give the same batches in the same order (a function of the epoch's permutation only), so a streamed and a
resident run of one config train to the same weights.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

from bench.data import Dataset
from bench.data.prepared import is_mapped

AHEAD = 2
DEVICE_SHARE = 0.25


def _parts(ds: Dataset, labelled_only: bool) -> list[torch.Tensor]:
    return [ds.train_x] if labelled_only or ds.unlabeled_x is None else [ds.train_x, ds.unlabeled_x]


def _nbytes(parts: list[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in parts)


def should_stream(parts: list[torch.Tensor], device: torch.device) -> bool:
    if any(is_mapped(p) for p in parts):
        return True
    if device.type != "cuda":
        return False  # host memory is the device's: nothing to save by leaving the images behind
    return _nbytes(parts) > DEVICE_SHARE * torch.cuda.get_device_properties(device).total_memory


def training_source(ds: Dataset, device: torch.device, labelled_only: bool = False,
                    stream: bool | None = None) -> Resident | Streamed:
    """The source for ``ds``'s pre-training images; ``stream`` None decides by ``should_stream``."""
    parts = _parts(ds, labelled_only)
    labels = torch.cat([ds.train_y, *[torch.full((len(p),), -1, dtype=torch.int64) for p in parts[1:]]])
    stream = should_stream(parts, device) if stream is None else stream
    return (Streamed if stream else Resident)(parts, labels.to(device), device)


class Resident:
    def __init__(self, parts: list[torch.Tensor], labels: torch.Tensor, device: torch.device) -> None:
        self.device, self.labels = device, labels
        self.parts = [p.to(device) for p in parts]
        self.starts = [0]
        for p in self.parts[:-1]:
            self.starts.append(self.starts[-1] + len(p))

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Images at ``idx`` (any order), on the parts' device."""
        idx = idx.to(self.parts[0].device)
        if len(self.parts) == 1:
            return torch.index_select(self.parts[0], 0, idx)  # same values as parts[0][idx], 1.5-20x faster on a CPU
        out = torch.empty((len(idx), *self.parts[0].shape[1:]), dtype=torch.uint8, device=idx.device)
        for part, lo in zip(self.parts, self.starts, strict=True):
            sel = (idx >= lo) & (idx < lo + len(part))
            out[sel] = torch.index_select(part, 0, idx[sel] - lo)
        return out

    def batches(self, order: torch.Tensor, batch_size: int, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, uint8 images) on the device for the first ``steps`` batches of ``order``."""
        order = order.to(self.device)
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield idx, self.gather(idx)


class Streamed(Resident):
    def __init__(self, parts: list[torch.Tensor], labels: torch.Tensor, device: torch.device) -> None:
        self.device, self.labels, self.parts = device, labels, parts  # parts stay on the host
        self.starts = [0]
        for p in parts[:-1]:
            self.starts.append(self.starts[-1] + len(p))
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None

    def _host(self, idx: torch.Tensor) -> torch.Tensor:
        """Images at the sorted host indices ``idx``, each part read in one ascending sweep."""
        out = torch.empty((len(idx), *self.parts[0].shape[1:]), dtype=torch.uint8, pin_memory=self.cuda)
        bounds = [*self.starts[1:], len(self)]
        a = 0
        for part, lo, hi in zip(self.parts, self.starts, bounds, strict=True):
            b = int(torch.searchsorted(idx, hi))
            if b > a:
                torch.index_select(part, 0, idx[a:b] - lo, out=out[a:b])
            a = b
        return out

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
        """The batch on the device in sorted order, the inverse permutation, and the copy's event (GPU)."""
        ordered, perm = idx.sort()
        inverse = perm.argsort()
        x = self._host(ordered)
        if not self.cuda:
            return x, inverse, None
        with torch.cuda.stream(self.copy_stream):
            x, inverse = x.to(self.device, non_blocking=True), inverse.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        return x, inverse, done

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        return self._arrive(*self._fetch(idx.cpu()))

    def _arrive(self, x: torch.Tensor, inverse: torch.Tensor, done: torch.cuda.Event | None) -> torch.Tensor:
        if done is not None:
            # The loop's stream waits for the copy, and the allocator learns that stream uses the copied memory.
            torch.cuda.current_stream(self.device).wait_event(done)
            x.record_stream(torch.cuda.current_stream(self.device))
            inverse.record_stream(torch.cuda.current_stream(self.device))
        return torch.index_select(x, 0, inverse)

    def batches(self, order: torch.Tensor, batch_size: int, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = order.cpu()
        ready: queue.Queue = queue.Queue(maxsize=AHEAD)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for i in range(steps):
                    if not put(self._fetch(order[i * batch_size:(i + 1) * batch_size])):
                        return
            except BaseException as err:  # noqa: BLE001 - handed to the loop's thread, raised there
                put(err)

        worker = threading.Thread(target=work, name="repbench-stream", daemon=True)
        worker.start()
        try:
            for i in range(steps):
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                yield order[i * batch_size:(i + 1) * batch_size].to(self.device), self._arrive(*item)
        finally:
            stop.set()  # the loop left early (divergence) or finished: the worker ends at its next put
            worker.join()
