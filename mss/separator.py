"""Separate users' songs: `mss.Separator`, the Python API behind `separate.py`.

    sep = mss.Separator.from_checkpoint("last.ckpt", device="cuda")
    stems = sep.separate(waveform, sample_rate)          # {"drums": [C, T], ...}
    sep.separate_file("song.mp3", "separated")           # separated/song/drums.wav ...

A file is read in blocks, resampled to the model's rate, separated with the chunked overlap-add
of `mss.apply.separate_stream`, resampled back and written block by block as soon as each part
is final, so memory does not grow with the song's length. Stems come back at the song's sample
rate, channel count (mono in, mono out) and exact length. Separators that need the whole song
(`whole_track`, the DSP baselines) read it whole instead. Evaluation and validation use the same
engine (`mss.apply.separate`) with the same settings (`mss.inference.InferenceSettings`).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mss.apply import separate, separate_stream
from mss.errors import ConfigError
from mss.inference import InferenceSettings, resolve_device
from mss.io import OutputFormat, StemReport, StemSetWriter, probe, read_audio, read_blocks
from mss.io.resample import StreamResampler, resample
from mss.models._contract import check_separator

__all__ = ["FileResult", "Separator", "model_from_config", "output_paths", "stem_mix"]

# Frames read per block: about 1.5 s at 44.1 kHz; memory is set by the segment, not by this.
_READ_FRAMES = 1 << 16

# (done seconds, total seconds or None when the length is only known at the end)
Progress = Callable[[float, float | None], None]


@dataclass
class FileResult:
    """What `Separator.separate_file` did with one song."""

    input: Path
    stems: dict[str, Path]
    duration: float = 0.0  # seconds of audio
    seconds: float = 0.0  # wall time spent on it
    peak_memory_mb: float = 0.0  # the process's peak resident memory so far
    reports: list[StemReport] = field(default_factory=list)
    skipped: bool = False

    @property
    def real_time_factor(self) -> float:
        return self.seconds / self.duration if self.duration else float("nan")

    @property
    def clipped(self) -> dict[str, int]:
        """Samples clipped per written stem (clamp, or saturated by an integer format)."""
        return {
            name: report.clipped
            for name, report in zip(self.stems, self.reports, strict=True)
            if report.clipped
        }


def stem_mix(
    sources: Sequence[str], two_stems: str | None = None, subset: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """The stems to write and how each is made from the separator's: (names, weights [O, S]).

    `two_stems="vocals"` gives `vocals` and `no_vocals` (the sum of the other estimates), as
    Demucs does; `subset` writes only those sources, in the separator's order.
    """
    sources = [str(s) for s in sources]
    if two_stems is not None and subset:
        raise ConfigError("give two_stems or sources, not both")
    if two_stems is not None:
        if two_stems not in sources:
            raise ConfigError(f"two_stems={two_stems}: the separator's sources are {sources}")
        weights = np.zeros((2, len(sources)), np.float32)
        weights[0, sources.index(two_stems)] = 1
        weights[1] = 1 - weights[0]
        return [two_stems, f"no_{two_stems}"], weights
    names = sources if not subset else [str(s) for s in subset]
    unknown = [n for n in names if n not in sources]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"sources={list(names)}: choose distinct names among {sources}")
    names = [s for s in sources if s in names]
    weights = np.zeros((len(names), len(sources)), np.float32)
    for row, name in enumerate(names):
        weights[row, sources.index(name)] = 1
    return names, weights


def output_paths(
    song: str | os.PathLike, output_dir: str | os.PathLike, names: Sequence[str], extension: str
) -> dict[str, Path]:
    """`<output_dir>/<song file name without extension>/<stem><extension>` for each stem
    (`extension` with its dot, as `OutputFormat.extension`)."""
    folder = Path(output_dir) / Path(song).stem
    return {name: folder / f"{name}{extension}" for name in names}


def model_from_config(cfg: Any) -> tuple[nn.Module, str]:
    """The separator an eval or separate config asks for, and a string saying where it came
    from (for provenance).

    `ckpt=PATH` rebuilds it from a training checkpoint (read as data; `allowed_targets` admits
    networks outside `mss.models`); `onnx=PATH` loads an exported model (`export.py`);
    `model=<name>` instantiates a separator that needs no training (DSP baselines,
    `trainable = False`) or carries its own weights (`pretrained = True`). A trainable model
    without weights is refused: its output would be that of random weights.
    """
    from hydra.utils import instantiate

    given = {k: cfg.get(k) for k in ("ckpt", "onnx", "model") if cfg.get(k) is not None}
    if len(given) > 1:
        raise ConfigError(
            f"give one of ckpt=PATH, onnx=PATH or model=<name>, not {' and '.join(given)}: "
            "a checkpoint or an exported file carries its own model"
        )
    if "ckpt" in given:
        from mss.checkpoint import load_separator_from_config

        ckpt = given["ckpt"]
        return load_separator_from_config(cfg, ckpt), f"ckpt:{Path(ckpt).resolve()}"
    if "onnx" in given:
        from mss.export import load_exported

        return load_exported(given["onnx"]), f"onnx:{Path(given['onnx']).resolve()}"
    if "model" not in given:
        raise ConfigError(
            "no separator given: pass ckpt=PATH (a checkpoint written by train.py), "
            "onnx=PATH (a model exported by export.py), or model=<name> for a separator that "
            "needs no training (a DSP baseline or a pretrained model)"
        )
    model_cfg = given["model"]
    separator = instantiate(model_cfg)
    contract = check_separator(separator)
    if contract.trainable and not contract.pretrained:
        raise ConfigError(
            f"model {type(separator).__name__} is trainable and has no pretrained weights, so "
            "it would run with random weights; train it first and pass ckpt=PATH"
        )
    return separator, f"model:{model_cfg.get('_target_', type(separator).__name__)}"


class Separator:
    """A separator ready to split songs of any rate, channel count and length.

    Args:
        model: any separator keeping the contract `model(mix[B, C, T]) -> stems[B, S, C, T]`
            (a trained network, a DSP baseline, an exported model).
        inference: chunking, shifts, seed and device (default `InferenceSettings()`).
        **settings: single settings that replace those of `inference` (`device="cuda"`).
    """

    def __init__(
        self, model: nn.Module, inference: InferenceSettings | None = None, **settings: Any
    ) -> None:
        self.contract = check_separator(model)
        inference = replace(inference or InferenceSettings(), **settings)
        self.inference = inference.for_model(self.contract)
        self.device = resolve_device(self.inference.device)
        self.model = model.eval().to(self.device)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        allowed_targets: Sequence[str] = (),
        inference: InferenceSettings | None = None,
        net_overrides: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> Separator:
        """A separator rebuilt from a checkpoint written by train.py (read as data only;
        `allowed_targets` admits networks outside `mss.models`; `net_overrides` changes
        inference settings of the network, see `mss.checkpoint.load_separator`)."""
        from mss.checkpoint import load_separator

        net = load_separator(path, allowed_targets=allowed_targets, net_overrides=net_overrides)
        return cls(net, inference, **settings)

    @property
    def sources(self) -> list[str]:
        return list(self.contract.sources)

    @property
    def sample_rate(self) -> int:
        return self.contract.sample_rate

    # ----------------------------------------------------------------------------- in memory

    def separate(self, waveform: Tensor | np.ndarray, sample_rate: int) -> dict[str, Tensor]:
        """Separate a song held in memory.

        Args:
            waveform: `[C, T]` (C = 1 or 2) or `[T]` (mono), float, any sample rate.
            sample_rate: the waveform's rate; resampled to the model's and back.
        Returns:
            `{source: Tensor [C, T]}` at the waveform's rate, channels and length (`[T]` when
            the waveform was `[T]`), float32 on the CPU.
        """
        audio = torch.as_tensor(waveform).detach().float().cpu().numpy()
        flat = audio.ndim == 1
        audio = audio[None] if flat else audio
        if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] < 1:
            raise ConfigError(
                f"Expected a waveform [channels (1 or 2), frames] or [frames]. "
                f"Found: {tuple(np.shape(waveform))}"
            )
        if not np.isfinite(audio).all():
            raise ConfigError("the waveform holds NaN or Inf samples")
        stems = self._separate_whole(audio, int(sample_rate))  # [S, C, T]
        return {
            name: torch.from_numpy(stem[0] if flat else stem)
            for name, stem in zip(self.sources, stems, strict=True)
        }

    def _separate_whole(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """`[C, T]` at `rate` -> `[S, C, T]` at `rate`, in one piece."""
        channels, frames = audio.shape
        mix = resample(self._to_model_channels(audio), rate, self.sample_rate)
        stems = separate(
            self.model,
            mix,
            sample_rate=self.sample_rate,
            device=self.device,
            **self.inference.chunking(),
        ).numpy()
        sources, model_channels, _ = stems.shape
        back = resample(stems.reshape(sources * model_channels, -1), self.sample_rate, rate, frames)
        return self._to_song_channels(back.reshape(sources, model_channels, frames), channels)

    def _to_model_channels(self, block: np.ndarray) -> np.ndarray:
        """A song's `[C, n]` with the model's channel count (mono duplicated, or downmixed)."""
        wanted = self.contract.audio_channels
        if block.shape[0] == wanted:
            return block
        if block.shape[0] == 1:
            return np.repeat(block, wanted, axis=0)
        if wanted == 1:
            return block.mean(axis=0, keepdims=True)
        raise ConfigError(
            f"{block.shape[0]} channels cannot go to a model of {wanted} channels"
        )  # pragma: no cover - the readers allow 1 or 2 channels only

    @staticmethod
    def _to_song_channels(stems: np.ndarray, channels: int) -> np.ndarray:
        """Stems `[S, C_model, n]` with the song's channel count: a mono song gets the mean."""
        if stems.shape[1] == channels:
            return stems
        if channels == 1:
            return stems.mean(axis=1, keepdims=True)
        return np.repeat(stems, channels, axis=1)

    # ------------------------------------------------------------------------------- files

    def separate_file(
        self,
        path: str | os.PathLike,
        output_dir: str | os.PathLike = "separated",
        format: str = "wav",
        bit_depth: int | None = None,
        clip: str = "clamp",
        two_stems: str | None = None,
        sources: Sequence[str] | None = None,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> FileResult:
        """Separate the song at `path` into `<output_dir>/<song name>/<stem>.<format>`.

        Streams the song (memory flat in its length) unless the separator needs it whole.
        The stems of one song appear together when all are written (atomically), so a song
        whose stems all exist was finished: it is skipped unless `overwrite`.

        Raises:
            mss.errors.AudioFileError: the song cannot be read (one line naming it), or the
                stems cannot be written.
            mss.errors.ConfigError: a format, bit depth, clip mode or stem choice that cannot
                work.
        """
        fmt = OutputFormat(format, bit_depth, clip)
        names, weights = stem_mix(self.sources, two_stems, sources)
        paths = output_paths(path, output_dir, names, fmt.extension)
        result = FileResult(Path(path), paths)
        if not overwrite and all(p.is_file() for p in paths.values()):
            result.skipped = True
            return result
        start = time.perf_counter()
        info = probe(path)
        fmt.check(info.sample_rate, info.channels)
        folder = next(iter(paths.values())).parent
        made_folder = not folder.exists()
        try:
            # all stems appear when the block ends without an error, none otherwise
            with StemSetWriter(
                list(paths.values()), info.sample_rate, info.channels, fmt
            ) as writer:
                if self.contract.whole_track:
                    frames = self._write_whole(path, weights, writer, progress)
                else:
                    frames = self._write_streamed(path, info, weights, writer, progress)
        except BaseException:
            if made_folder and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # a failed song leaves no empty folder behind
            raise
        result.reports = list(writer.reports or [])
        result.duration = frames / info.sample_rate
        result.seconds = time.perf_counter() - start
        result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return result

    def _write_whole(self, path, weights: np.ndarray, writer: StemSetWriter, progress) -> int:
        audio, rate = read_audio(path)
        stems = self._separate_whole(audio, rate)
        writer.write(np.einsum("os,sct->oct", weights, stems))
        if progress:
            progress(audio.shape[1] / rate, audio.shape[1] / rate)
        return audio.shape[1]

    def _write_streamed(
        self, path, info, weights: np.ndarray, writer: StemSetWriter, progress
    ) -> int:
        rate, model_rate = info.sample_rate, self.sample_rate
        total = info.duration if info.frames_exact else None
        frames_read = 0

        def model_blocks() -> Iterator[np.ndarray]:
            nonlocal frames_read
            to_model = StreamResampler(rate, model_rate, self.contract.audio_channels)
            for block in read_blocks(path, _READ_FRAMES, info=info):
                frames_read += block.shape[1]
                yield to_model.process(self._to_model_channels(block))
                if progress:
                    progress(frames_read / rate, total)
            yield to_model.flush()

        outputs, model_channels = weights.shape[0], self.contract.audio_channels
        back = StreamResampler(model_rate, rate, outputs * model_channels)

        def write(block: np.ndarray) -> None:
            if block.shape[1]:
                block = block.reshape(outputs, model_channels, -1)
                writer.write(self._to_song_channels(block, info.channels))

        stream = separate_stream(
            self.model,
            model_blocks(),
            sample_rate=model_rate,
            device=self.device,
            **self.inference.chunking(),
        )
        for stems in stream:
            mixed = np.einsum("os,sct->oct", weights, stems.numpy())
            write(back.process(mixed.reshape(outputs * model_channels, -1)))
        # the song's exact length, known once it has been read to its end
        write(back.flush(out_frames=frames_read))
        return frames_read
