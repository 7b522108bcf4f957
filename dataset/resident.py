"""Device-resident batches: a split loaded once onto the training device, batches cut there by a permutation.

For a split that fits in the device's memory (RAM on CPU, HBM on GPU) this replaces the chunk loader
(dataset/loader.py): no worker processes, no per-batch host-to-device copy, one gather per batch. The
chunk loader stays for data larger than memory; :func:`choose_data_path` picks between them.

**Memory.** Every row is held once on the device as one ``int32 [N, W]`` matrix, the 4-byte words of each
batch block side by side (``sparse`` int32, ``dense`` float32, ``label`` float32 and, for stores with sequence
fields, ``seq`` int32, ``seq_len`` int32, ``seq_weight`` float32; floats kept as their bits): the store's own
row width, ``N x row_bytes`` (:func:`resident_bytes`), e.g. 160 bytes per Criteo row (26 ids, 13 dense values,
a label) where int64 ids would take 264. Each process holds its own copy (DDP over CPU processes: one per
process). A batch is one ``index_select`` of ``B`` whole rows, then each block is copied out, ids widened to
int64 as in the chunk loader (``sparse`` int64 [B, F], ``dense`` float32 [B, D], ``label`` float32 [B, T],
``seq`` int32, ``seq_len`` int64, ``seq_weight`` float32). One gather of whole rows beats a gather per block
(one CPU core, 4096 Criteo-like rows: 0.8-0.9 ms, against 1.4 ms for per-block int32 gathers and 2.2-2.6 ms
for int64 ones). Training also holds this rank's row indices of the epoch (int64, ``8 N / W`` bytes). The
split is read through :meth:`StoreReader.read_chunks` 64 MB at a time, so every chunk's checksum is verified
and the host needs about one read's worth of memory besides (on CPU rows go straight into the matrix).

**Order, ranks, drop** (``N`` rows, ``W = world_size`` ranks, batch size ``b`` per rank):

* ``train=True``: the epoch's order is a permutation of the ``N`` rows seeded by ``(seed, epoch)``,
  identical on every rank. It is drawn on the CPU (numpy, O(N) per epoch) and only this rank's indices are
  moved to the device, once per epoch: the same order on every device type (a CPU test checks the order a
  GPU run sees; a run resumed on another device type continues the same epoch), at a cost that is small
  next to an epoch. The last ``N mod W`` rows of the permutation are dropped (fewer than ``W`` rows per
  epoch, different rows each epoch; none with one rank). Global batch ``i`` is the next ``W b`` rows of the
  permutation, and rank ``r`` takes its ``r``-th ``b``; the last global batch may be shorter and is split
  into ``W`` equal parts. So every rank yields the same number of batches, ``ceil((N - N mod W) / (W b))``,
  disjoint rows, and the ranks together see exactly the batches one process with batch ``W b`` would see.
* ``train=False``: fixed order; rank ``r`` takes the rows ``[N r / W, N (r + 1) / W)`` of the split in
  stored order, in batches of ``b`` (only the last may be partial): every row exactly once across ranks, no
  drop, no padding; batch counts may differ by one between ranks.

``set_epoch(e, skip_batches=k)`` makes the next iteration yield batches ``k..`` of epoch ``e`` (an exact
mid-epoch resume); an iteration without a new ``set_epoch`` repeats the current epoch from its start.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch

from dataset.loader import TORCH_DTYPES
from dataset.schema import Schema
from dataset.store import SPLITS, StoreReader, human_size

Batch = dict[str, torch.Tensor]
DATA_PATHS = ("auto", "chunks", "resident")
RESIDENT_FRACTION = 0.5  # auto: the splits may take this much of the free memory; the rest is the model's
_READ_BYTES = 64 << 20  # bytes of chunks read from the store per read_chunks call while loading


def _layout(schema: Schema) -> list[tuple[str, int, int, np.dtype, np.dtype]]:
    """``(block, first column, last column + 1, store dtype, batch dtype)`` of each batch block in the
    resident matrix, in :meth:`Schema.batch_keys` order."""
    out, col = [], 0
    keys = schema.batch_keys()
    for b in schema.blocks():
        if b.name in keys:
            if b.store_dtype.itemsize != 4:
                raise ValueError(f"block {b.name} is stored as {b.store_dtype}; the resident matrix holds 4-byte words")
            out.append((b.name, col, col + b.width, b.store_dtype, b.batch_dtype))
            col += b.width
    return out


def row_bytes(schema: Schema) -> int:
    """Bytes of one resident row: the store's own row width (every block is 4 bytes a value)."""
    return 4 * sum(stop - start for _, start, stop, _, _ in _layout(schema))


def resident_bytes(reader: StoreReader, splits: Sequence[str] = SPLITS) -> int:
    """Device bytes that ``splits`` take when resident, from the store's metadata alone."""
    return sum(reader.num_rows(s) for s in splits) * row_bytes(reader.schema)


class ResidentSplit:
    """Every row of one split of a store, on ``device``, as ``rows``: int32 [N, W] (see the module docstring)."""

    def __init__(self, reader: StoreReader, split: str, device: torch.device | str = "cpu") -> None:
        if split not in reader.meta["splits"]:
            raise ValueError(f"{reader.path} has no split {split!r}; it has {sorted(reader.meta['splits'])}")
        self.split = split
        self.schema: Schema = reader.schema
        self.device = torch.device(device)
        self.layout = _layout(self.schema)
        self.num_rows = reader.num_rows(split)
        self.rows = torch.empty((self.num_rows, row_bytes(self.schema) // 4), dtype=torch.int32, device=self.device)
        self._load(reader)

    def _load(self, reader: StoreReader) -> None:
        """Fill ``rows`` from the store, about 64 MB of chunks per read (each chunk verified by the reader)."""
        chunks, chunk_rows = reader.num_chunks(self.split), int(reader.meta["chunk_size"])
        step = max(1, _READ_BYTES // max(1, chunk_rows * row_bytes(self.schema)))
        start = 0
        for first in range(0, chunks, step):
            arrays = reader.read_chunks(self.split, range(first, min(first + step, chunks)))
            parts = [arrays[name].view(np.int32) for name, _, _, _, _ in self.layout]
            n = len(parts[0])
            if self.device.type == "cpu":  # straight into the matrix: no second copy of the split
                np.concatenate(parts, axis=1, out=self.rows.numpy()[start:start + n])
            else:
                self.rows[start:start + n].copy_(torch.from_numpy(np.concatenate(parts, axis=1)))
            start += n
        if start != self.num_rows:
            raise ValueError(f"{reader.path}: split {self.split!r} holds {start} rows, its metadata says "
                             f"{self.num_rows}; preprocess the store again")

    def take(self, index: torch.Tensor | slice) -> Batch:
        """The batch of the rows ``index`` (int64 indices on the device, or a slice): fresh tensors of the
        chunk loader's keys and dtypes, never views of the resident rows."""
        words = self.rows[index] if isinstance(index, slice) else self.rows.index_select(0, index)  # [B, W]
        batch = {}
        for name, start, stop, store_dtype, batch_dtype in self.layout:
            part = words[:, start:stop].view(TORCH_DTYPES[store_dtype])  # [B, width]
            batch[name] = part.to(TORCH_DTYPES[batch_dtype], memory_format=torch.contiguous_format, copy=True)
        return batch


def _train_sizes(n: int, batch_size: int, world_size: int) -> list[int]:
    """Rows of each batch of one rank in training (the same on every rank and epoch)."""
    used = n - n % world_size
    full, rest = divmod(used, batch_size * world_size)
    return [batch_size] * full + ([rest // world_size] if rest else [])


def _eval_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    return n * rank // world_size, n * (rank + 1) // world_size


class ResidentLoader:
    """Batches of a :class:`ResidentSplit` for one rank, with the interface of dataset/loader.py's
    ``CTRLoader``: ``set_epoch``, ``len`` (batches this rank yields per epoch), ``num_rows``, iteration.
    See the module docstring for the order, the sharding and the drop. Built by :func:`make_resident_loader`."""

    def __init__(self, data: ResidentSplit, batch_size: int, *, train: bool, seed: int = 2018, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size} (--batch_size)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
        if train and data.num_rows < world_size:
            raise ValueError(f"split {data.split!r} has {data.num_rows} rows but training runs on {world_size} "
                             f"ranks, and every rank needs at least one row")
        self.dataset = data
        self.schema = data.schema
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size = rank, world_size
        self._epoch = self._skip = 0
        n = data.num_rows
        if train:
            self._sizes = _train_sizes(n, batch_size, world_size)
        else:
            first, stop = _eval_bounds(n, rank, world_size)
            self._sizes = [min(batch_size, stop - a) for a in range(first, stop, batch_size)]

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch of the next iteration, and how many of its first batches to skip."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= skip_batches <= len(self):
            raise ValueError(f"skip_batches={skip_batches} is outside 0..{len(self)}, the batches of epoch {epoch}: "
                             f"the checkpoint does not match this data, batch size or world size")
        self._epoch, self._skip = epoch, skip_batches

    @property
    def num_rows(self) -> int:
        """Rows this rank yields per epoch (training drops ``N mod world_size`` rows over all ranks)."""
        return sum(self._sizes)

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[Batch]:
        epoch, skip = self._epoch, self._skip
        self._skip = 0
        offsets = np.concatenate([[0], np.cumsum(self._sizes)]).tolist()
        if not self.train:
            first = _eval_bounds(self.dataset.num_rows, self.rank, self.world_size)[0]
            return (self.dataset.take(slice(first + offsets[i], first + offsets[i + 1]))
                    for i in range(skip, len(self)))
        index = torch.from_numpy(self.rank_rows(epoch)).to(self.dataset.device)  # once per epoch
        return (self.dataset.take(index[offsets[i]:offsets[i + 1]]) for i in range(skip, len(self)))

    def rank_rows(self, epoch: int) -> np.ndarray:
        """This rank's rows of ``epoch`` in training, in the order they are yielded (int64 [num_rows])."""
        n, w, b = self.dataset.num_rows, self.world_size, self.batch_size
        order = np.random.default_rng([self.seed, epoch]).permutation(n)[:n - n % w]
        full = (len(order) // (w * b)) * w * b
        head = order[:full].reshape(-1, w, b)[:, self.rank].reshape(-1)
        tail = order[full:].reshape(w, -1)[self.rank]
        return np.concatenate([head, tail])


def make_resident_loader(store: str | os.PathLike | StoreReader | ResidentSplit, split: str, batch_size: int, *,
                         train: bool, seed: int = 2018, rank: int = 0, world_size: int = 1,
                         device: torch.device | str = "cpu") -> ResidentLoader:
    """Loader of one split for one rank, the split loaded onto ``device`` (or an already loaded
    :class:`ResidentSplit`, shared by several loaders). Every rank must pass the same arguments except
    ``rank`` and ``device``."""
    if isinstance(store, ResidentSplit):
        data = store
    else:
        reader = store if isinstance(store, StoreReader) else StoreReader(os.fspath(store))
        data = ResidentSplit(reader, split, device)
    return ResidentLoader(data, batch_size, train=train, seed=seed, rank=rank, world_size=world_size)


def available_memory() -> int:
    """Bytes of RAM available to new allocations (``MemAvailable`` of /proc/meminfo; else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(devices: Sequence[torch.device], processes: int = 1) -> tuple[int, str]:
    """-> (bytes the resident splits of one process may take, where that comes from). CUDA: a fraction of the
    free memory of the device with the least (``torch.cuda.mem_get_info``, which creates a CUDA context on
    each device asked). CPU: a fraction of the available RAM, shared by the ``processes`` training
    processes of this machine, each of which holds its own copy."""
    cuda = sorted({d for d in devices if d.type == "cuda"}, key=str)
    if cuda:
        free, device = min(((torch.cuda.mem_get_info(d)[0], d) for d in cuda), key=lambda pair: pair[0])
        return int(free * RESIDENT_FRACTION), f"{RESIDENT_FRACTION:.0%} of the {human_size(free)} free on {device}"
    free = available_memory()
    share = f", shared by {processes} processes" if processes > 1 else ""
    return (int(free * RESIDENT_FRACTION / processes),
            f"{RESIDENT_FRACTION:.0%} of the {human_size(free)} of RAM available{share}")


def choose_data_path(requested: str, reader: StoreReader, devices: Sequence[torch.device],
                     processes: int = 1) -> tuple[str, str]:
    """-> (``chunks`` or ``resident``, why). ``auto`` takes ``resident`` when the train, valid and test splits
    together fit in :func:`memory_budget`, else ``chunks``; the other values are taken as they are."""
    if requested not in DATA_PATHS:
        raise ValueError(f"data path {requested!r} is not one of {DATA_PATHS}")
    if requested != "auto":
        return requested, f"--data_path {requested}"
    need = resident_bytes(reader)
    budget, source = memory_budget(devices, processes)
    fits = need <= budget
    return ("resident" if fits else "chunks",
            f"--data_path auto: the splits take {human_size(need)}, {'within' if fits else 'more than'} {source}")
