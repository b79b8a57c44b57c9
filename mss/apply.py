"""Chunked overlap-add inference: separate tracks of any length with bounded memory.

Long tracks do not fit through a network at once (demucs#231, #498), so the mixture is cut into
segments that overlap, each segment is separated on its own, and the results are cross-faded with
a trapezoidal window (linear ramps over the overlap, flat in between) and divided by the summed
window. Because of that normalisation a pointwise model gives exactly its unchunked result, and a
model with a finite receptive field gives it away from the segment borders.

Two entry points share one engine (`_OverlapAdd`): `separate` takes the whole mixture at once and
`separate_stream` takes one track in blocks and yields the stems as soon as every segment that
overlaps them has run, so its memory does not grow with the track. `separate` is the stream fed
a single block: the two cut the same segments, batch them the same way and add them up in the
same order, whatever the block sizes. Both offer Demucs's test-time augmentation `shifts`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from mss.models._contract import check_separator

__all__ = ["MAX_SHIFT_SECONDS", "separate", "separate_stream", "transition_window"]

# Largest time shift of `shifts`, as Demucs's `apply_model`.
MAX_SHIFT_SECONDS = 0.5


def transition_window(length: int, ramp: int) -> Tensor:
    """Trapezoidal weights `[length]`: linear ramps of `ramp` samples at both ends, 1 in between.

    The weights are strictly positive (the ramps start at `1 / (ramp + 1)`), so every sample of a
    segment counts and the normalisation by the summed weights never divides by zero. When two
    ramps would overlap (`ramp > length / 2`) the window becomes a triangle.
    """
    index = torch.arange(length, dtype=torch.float32)
    rise = (index + 1) / (ramp + 1)
    fall = (length - index) / (ramp + 1)
    return torch.clamp(torch.minimum(rise, fall), max=1.0)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")  # DSP separators have no parameters


def _run(model: nn.Module, chunks: Tensor, device: torch.device) -> Tensor:
    """Separate `chunks[N, C, L]` on `device`; returns `[N, S, C, L]` on the CPU.

    Only the model call runs in inference mode: the engine is a generator, and a mode entered
    around a `yield` would leak into the caller's code between blocks.
    """
    with torch.inference_mode():
        out = model(chunks.to(device))
    if out.dim() != 4 or out.shape[0] != chunks.shape[0] or out.shape[2:] != chunks.shape[1:]:
        raise ValueError(
            f"{type(model).__name__} returned shape {tuple(out.shape)} for input "
            f"{tuple(chunks.shape)}; the separator contract is mix[B, C, T] -> stems[B, S, C, T] "
            "with the same B, C and T"
        )
    return out.float().cpu()


class _OverlapAdd:
    """Weighted overlap-add over tracks `[B, C, T]` that arrive in blocks along T.

    The grid: segments of `seg` samples, consecutive ones sharing `ramp` samples (`hop = seg -
    ramp` apart), laid over the track padded with `ramp` zeros in front (the first and last real
    samples then fall in the flat part of a window, and the input past the borders is zeros as
    when the track is separated in one piece) and with zeros behind up to the end of the last
    segment. Segment `k` covers padded samples `[k * hop, k * hop + seg)`, i.e. track samples
    from `k * hop - ramp`. A track of at most `seg` samples, or any track when `seg` is None, is
    separated in one call instead, so blocks are held until the track is known to be longer.

    Jobs (segment `k`, item `b`) run in the order `k * B + b`, `batch_size` per model call, and
    a call waits until its batch is complete (or the input ends), so the calls are the same for
    any block sizes. Once segment `k` has run for every item, no later segment reaches before
    padded sample `(k + 1) * hop`: everything before it is final and handed out.
    """

    def __init__(
        self,
        model: nn.Module,
        seg: int | None,
        overlap: float,
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.model, self.seg, self.batch_size, self.device = model, seg, batch_size, device
        if seg is not None:
            self.ramp = min(int(round(overlap * seg)), seg - 1)
            self.hop = seg - self.ramp
            self.window = transition_window(seg, self.ramp)
        self.shape: tuple[int, int] | None = None  # (B, C) of the first block
        self.seen = 0  # track samples received
        self.length: int | None = None  # the track's length, once the input has ended
        self.chunked = False  # longer than a segment: overlap-add, not one call
        self.pending: list[Tensor] = []  # blocks not merged into `input` yet
        self.input: Tensor | None = None  # padded samples from `input_start` on
        self.input_start = 0
        self.done = 0  # jobs run
        self.out: Tensor | None = None  # [B, S, C, n] window-weighted sums from `out_start` on
        self.weight = torch.zeros(0)  # [n] summed windows over the same samples
        self.out_start = 0

    @property
    def held(self) -> int:
        """Samples per channel that the engine's buffers occupy (input not yet used, output not
        yet final), counting the whole memory behind each view."""
        buffers = [*self.pending, self.input, self.out]
        return sum(_samples_behind(buffer) for buffer in buffers if buffer is not None)

    def feed(self, block: Tensor) -> Iterator[Tensor]:
        """Take `block[B, C, n]`; yield `[B, S, C, m]` stems that became final."""
        if self.length is not None:
            raise RuntimeError("the input has already ended")
        if self.shape is None:
            self.shape = (block.shape[0], block.shape[1])
        elif tuple(block.shape[:2]) != self.shape:
            raise ValueError(
                f"every block needs the same batch and channels {self.shape}, "
                f"got a block of shape {tuple(block.shape)}"
            )
        if block.shape[-1] == 0:
            return
        self.pending.append(block)
        self.seen += block.shape[-1]
        if self.seg is None:
            return
        if not self.chunked and self.seen > self.seg:
            self.chunked = True
            # The front padding: input[..., 0] is padded sample 0.
            self.pending.insert(0, block.new_zeros(*self.shape, self.ramp))
        if self.chunked:
            # Every segment that ends inside the input received so far exists whatever the
            # track's length turns out to be (the last one is the first to reach `ramp` past it).
            yield from self._run_ready((self.ramp + self.seen - self.seg) // self.hop + 1)

    def finish(self) -> Iterator[Tensor]:
        """End of the input: yield the remaining stems."""
        if self.length is not None:
            raise RuntimeError("the input has already ended")
        self.length = self.seen
        if self.length == 0:
            raise ValueError("the mixture has no samples")
        if not self.chunked:
            mix = torch.cat(self.pending, dim=-1)
            self.pending = []
            starts = range(0, len(mix), self.batch_size)
            parts = [_run(self.model, mix[i : i + self.batch_size], self.device) for i in starts]
            yield torch.cat(parts)  # cat also turns inference-mode results into ordinary tensors
            return
        n_chunks = max(1, math.ceil((self.length + 2 * self.ramp - self.seg) / self.hop) + 1)
        padded_length = (n_chunks - 1) * self.hop + self.seg
        self.pending.append(torch.zeros(*self.shape, padded_length - self.ramp - self.length))
        yield from self._run_ready(n_chunks)

    def _run_ready(self, n_chunks: int) -> Iterator[Tensor]:
        """Run the jobs of segments `< n_chunks` in full batches (all of them once finished)."""
        items = self.shape[0]
        ready = n_chunks * items
        ended = self.length is not None
        while ready - self.done >= self.batch_size or (ended and self.done < ready):
            jobs = range(self.done, min(self.done + self.batch_size, ready))
            last_end = (jobs[-1] // items) * self.hop + self.seg
            if self.input is None or self.input_start + self.input.shape[-1] < last_end:
                self._merge_pending()
            chunks = torch.stack([self._segment_input(j // items, j % items) for j in jobs])
            estimates = _run(self.model, chunks, self.device)
            self._grow_output(estimates.shape[1], last_end)
            for j, estimate in zip(jobs, estimates, strict=True):
                k, b = divmod(j, items)
                start = k * self.hop - self.out_start
                self.out[b, :, :, start : start + self.seg] += estimate * self.window
                if b == 0:
                    self.weight[start : start + self.seg] += self.window
            self.done = jobs[-1] + 1
            # Segment `first` is the first one that has not run for every item.
            first = self.done // items
            final = last_end if ended and self.done == ready else first * self.hop
            self.input = self.input[..., first * self.hop - self.input_start :]
            self.input_start = first * self.hop
            stems = self._emit(final)
            if stems is not None:
                yield stems

    def _merge_pending(self) -> None:
        # Blocks are merged once per model call, not once per block, so tiny blocks cost no
        # repeated copies of the buffer.
        parts = self.pending if self.input is None else [self.input, *self.pending]
        self.input = torch.cat(parts, dim=-1)
        self.pending = []

    def _segment_input(self, k: int, b: int) -> Tensor:
        start = k * self.hop - self.input_start
        return self.input[b, :, start : start + self.seg]

    def _grow_output(self, sources: int, end: int) -> None:
        """Extend the sums with zeros up to padded sample `end`."""
        if self.out is None:
            self.out = torch.zeros(self.shape[0], sources, self.shape[1], 0)
        extra = end - self.out_start - self.out.shape[-1]
        if extra > 0:
            self.out = torch.cat([self.out, self.out.new_zeros(*self.out.shape[:-1], extra)], -1)
            self.weight = torch.cat([self.weight, self.weight.new_zeros(extra)])

    def _emit(self, end: int) -> Tensor | None:
        """Normalise and hand out the sums before padded sample `end`, cut to the track."""
        start, cut = self.out_start, end - self.out_start
        lo = max(0, self.ramp - start)  # the front padding
        hi = cut if self.length is None else min(cut, self.ramp + self.length - start)
        stems = self.out[..., lo:hi] / self.weight[lo:hi] if hi > lo else None
        self.out, self.weight = self.out[..., cut:], self.weight[cut:]
        self.out_start = end
        return stems


def _samples_behind(tensor: Tensor) -> int:
    """Length along the last axis of the memory that a `[..., n]` tensor or view keeps alive."""
    elements = tensor.untyped_storage().nbytes() // tensor.element_size()
    return elements // math.prod(tensor.shape[:-1])


def _take(pieces: list[Tensor], n: int) -> Tensor:
    """Remove and return the first `n` samples of the queue `pieces` as one tensor."""
    joined = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
    pieces[:] = [joined[..., n:]] if joined.shape[-1] > n else []
    return joined[..., :n]


def _separate_blocks(
    model: nn.Module,
    blocks: Iterable[Tensor],
    seg: int | None,
    overlap: float,
    batch_size: int,
    device: torch.device,
    offsets: list[int],
) -> Iterator[Tensor]:
    """Blocks `[B, C, n]` in, final stems `[B, S, C, m]` out, averaged over the time shifts.

    Shift `i` separates the mixture delayed by `offsets[i]` zeros and drops as many samples from
    the front of its stems; the average of the shifted runs is final where every run is.
    """
    engines = [_OverlapAdd(model, seg, overlap, batch_size, device) for _ in offsets]
    queues: list[list[Tensor]] = [[] for _ in offsets]
    skips = list(offsets)

    def collect(index: int, stems: Iterable[Tensor]) -> None:
        for piece in stems:
            drop = min(skips[index], piece.shape[-1])
            skips[index] -= drop
            if piece.shape[-1] > drop:
                queues[index].append(piece[..., drop:])

    def average() -> Iterator[Tensor]:
        ready = min(sum(piece.shape[-1] for piece in queue) for queue in queues)
        if ready:
            total = _take(queues[0], ready)
            for queue in queues[1:]:
                total = total + _take(queue, ready)
            yield total / len(queues) if len(queues) > 1 else total

    received = 0
    for block in blocks:
        for index, (engine, offset) in enumerate(zip(engines, offsets, strict=True)):
            if engine.shape is None and offset:
                collect(index, engine.feed(block.new_zeros(*block.shape[:2], offset)))
            collect(index, engine.feed(block))
        received += block.shape[-1]
        yield from average()
    if not received:
        raise ValueError("the mixture has no samples")
    for index, engine in enumerate(engines):
        collect(index, engine.finish())
    yield from average()


def _check_arguments(
    model: nn.Module,
    segment: float | None,
    overlap: float,
    sample_rate: int,
    batch_size: int,
    shifts: int,
) -> None:
    check_separator(model, sample_rate=sample_rate)
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if segment is not None and segment <= 0:
        raise ValueError(f"segment must be a positive number of seconds or None, got {segment}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shifts < 0:
        raise ValueError(f"shifts must be >= 0, got {shifts}")


def _plan(
    model: nn.Module,
    segment: float | None,
    sample_rate: int,
    device: str | torch.device | None,
    shifts: int,
    seed: int,
) -> tuple[int | None, torch.device, list[int]]:
    """Segment length in samples, the device to run on, and the delay of each shifted run."""
    seg = None if segment is None else max(1, int(round(segment * sample_rate)))
    if device is not None:
        model.to(device)
    run_device = torch.device(device) if device is not None else _model_device(model)
    if shifts == 0:
        return seg, run_device, [0]
    max_shift = max(1, int(MAX_SHIFT_SECONDS * sample_rate))
    generator = torch.Generator().manual_seed(seed)
    return seg, run_device, torch.randint(max_shift, (shifts,), generator=generator).tolist()


def separate(
    model: nn.Module,
    mix: Tensor | np.ndarray,
    segment: float | None,
    overlap: float,
    sample_rate: int,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    shifts: int = 0,
    seed: int = 0,
) -> Tensor:
    """Separate full tracks with weighted overlap-add over segments.

    Args:
        model: a separator, `model(mix[B, C, L]) -> stems[B, S, C, L]`, already in the mode
            (eval) the caller wants; it is moved to `device` when one is given.
        mix: `[B, C, T]` or `[C, T]` mixture, any T >= 1.
        segment: segment length in seconds; None (or a segment at least as long as the track)
            separates the whole track in one call.
        overlap: fraction of a segment shared with the next one, in [0, 1).
        sample_rate: the mixture's sample rate; must equal `model.sample_rate` when the model
            has one, since a separator run at the wrong rate gives plausible-looking garbage.
        batch_size: segments per forward call.
        device: where the model runs (default: where its parameters are). Segments go there one
            batch at a time; results come back to the CPU, so device memory holds only a batch.
        shifts: Demucs's test-time augmentation: average `shifts` runs, each on the mixture
            delayed by a random number of samples below `MAX_SHIFT_SECONDS` (its stems advanced
            back), so segment borders and strides fall elsewhere each time; 0 = one plain run.
            Costs `shifts` times the compute.
        seed: seeds the shifts' delays, so a run is reproducible and `separate_stream` with the
            same seed gives the same stems.

    Returns:
        `[B, S, C, T]` float32 on the CPU (`[S, C, T]` when `mix` was `[C, T]`).
    """
    _check_arguments(model, segment, overlap, sample_rate, batch_size, shifts)
    mix = torch.as_tensor(mix)
    unbatched = mix.dim() == 2
    if unbatched:
        mix = mix[None]
    if mix.dim() != 3 or mix.shape[-1] < 1:
        raise ValueError(
            "Expected 2D (channel, frames) or 3D (batch, channel, frames) mixture with at least "
            f"one frame. Found: {tuple(mix.shape)}"
        )
    seg, run_device, offsets = _plan(model, segment, sample_rate, device, shifts, seed)
    mix = mix.detach().float().cpu()
    pieces = list(_separate_blocks(model, [mix], seg, overlap, batch_size, run_device, offsets))
    # Pieces are ordinary tensors (not inference-mode ones) that callers may edit in place.
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
    return out[0] if unbatched else out


def separate_stream(
    model: nn.Module,
    blocks: Iterable[Tensor | np.ndarray],
    segment: float | None,
    overlap: float,
    sample_rate: int,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    shifts: int = 0,
    seed: int = 0,
) -> Iterator[Tensor]:
    """Separate one track that arrives in blocks; yield its stems as soon as they are final.

    The yielded blocks, concatenated along time, are `separate(model, whole_mix, ...)` with the
    same arguments: the same segments, batches, window and normalisation, whatever the block
    sizes. A block of stems is final once every segment overlapping it has run, so the stream
    holds about `segment * (batch_size + 1)` seconds of input and output plus one input block
    (times `shifts` when shifting), however long the track. Until the track is known to be
    longer than one segment the blocks are only buffered, since a shorter track is separated in
    one call; with `segment=None` that means the whole track, in memory.

    Args:
        model: a separator that works on segments; those with `whole_track = True` (the DSP
            baselines) are refused, since they need the whole song at once.
        blocks: the mixture as consecutive `[C, n]` blocks (Tensor or numpy, any n >= 0, the
            same C), read lazily: the first model call happens when enough of them have come.
            Each is copied when taken, so a reader may reuse its buffer.
        segment, overlap, sample_rate, batch_size, device, shifts, seed: as `separate`.

    Returns:
        An iterator of `[S, C, m]` float32 CPU tensors, m >= 1.
    """
    _check_arguments(model, segment, overlap, sample_rate, batch_size, shifts)
    if check_separator(model).whole_track:
        raise ValueError(
            f"{type(model).__name__} needs the whole track at once (whole_track = True) and "
            "cannot separate a stream; read the mixture whole and use mss.apply.separate"
        )
    seg, run_device, offsets = _plan(model, segment, sample_rate, device, shifts, seed)
    stems = _separate_blocks(model, _batched(blocks), seg, overlap, batch_size, run_device, offsets)
    return (piece[0] for piece in stems)


def _batched(blocks: Iterable[Tensor | np.ndarray]) -> Iterator[Tensor]:
    """Each `[C, n]` block as a float32 CPU copy `[1, C, n]`."""
    for block in blocks:
        block = torch.as_tensor(block)
        if block.dim() != 2:
            raise ValueError(
                f"Expected 2D (channel, frames) mixture blocks. Found: {tuple(block.shape)}"
            )
        yield block.detach().to(device="cpu", dtype=torch.float32, copy=True)[None]
