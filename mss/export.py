"""Export a separator to ONNX or TorchScript, and run an exported file like a separator.

`export_separator` writes one file whose input is `mix[B, C, segment_frames]` and whose output
is `stems[B, S, C, segment_frames]`, with the separator contract (sources, sample rate, audio
channels, segment length) stored beside the graph as plain JSON: ONNX `metadata_props`, or
`extra/mss.json` inside the TorchScript archive. `load_exported` reads it back as a small
`nn.Module` that `mss.apply.separate` / `separate_stream` use like a trained separator: they
cut the track into segments of `segment` seconds and pad its ends.

The time axis is fixed at export, for both formats and every model (tried with torch 2.14):
- ONNX, torch.onnx's dynamo exporter: simple_demucs computes its padding with `math.ceil` on
  the length, which the exporter specialises (the file takes other lengths and answers them
  wrongly); written with integer operations, the bottleneck LSTM of simple_demucs and unet goes
  through torch.export's while-loop RNN decomposition for a dynamic axis, which fails ("stack
  expects each tensor to be equal size, but got torch.Size([Min(Max(0, ...") . The batch axis
  comes out fixed to one item too, so the wrapper runs a batch item by item. The TorchScript-
  based exporter (`dynamo=False`) also bakes simple_demucs' padding in, and cannot export unet
  ("STFT does not currently support complex types"). unet exports through the dynamo exporter
  because its masks multiply (re, im) pairs and the shared iSTFT is written as irfft +
  overlap-add while exporting (mss/models/_stft.py). hdemucs (torchaudio's HDemucs) does not
  export to ONNX: its complex spectrogram is padded with `aten.pad`, which torch.onnx cannot
  translate for complex tensors (tests/test_export.py documents it). Nor does unet with
  `wiener_iterations > 0`: the Wiener filter's complex arithmetic stops at `aten._to_copy`
  ("No decompositions registered for the complex-valued input").
- TorchScript: `torch.jit.script` compiles none of the models (list sizes it cannot infer,
  torchaudio's HDemucs arguments); `torch.jit.trace` works for all three, hdemucs included, and
  records one input length. PyTorch 2.14 deprecates TorchScript (FutureWarnings on trace, save
  and load): prefer ONNX where the model allows it.
Every export is checked against PyTorch on an input it was not traced with before it is
written, so a file that computes something else is never produced.

Trust: an ONNX file is data. onnxruntime runs only the standard operators of its graph, so
loading one runs no code from it. A TorchScript file is a program: loading it compiles the
TorchScript code stored inside, and `forward` does whatever that code does, not what its
metadata says. Like a pickle, it is for trusted sources only, so `load_exported` refuses it
unless `trust_code=True` (mss reads checkpoints as data for the same reason, mss/checkpoint.py).
Its metadata is read from the archive without loading the program.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mss.errors import CheckpointError, ConfigError, UserError
from mss.models._contract import check_mix

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportedSeparator",
    "export_from_config",
    "export_separator",
    "load_exported",
    "read_metadata",
]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
# Version of the metadata layout below; a reader refuses layouts it does not know.
METADATA_VERSION = 1
_TORCHSCRIPT_METADATA = "mss.json"
# Exported and PyTorch outputs may differ by float rounding only: this much, times the largest
# output magnitude when that is above 1.
VERIFY_ATOL = 1e-4


class ExportError(UserError, ValueError):
    """A separator the exporter cannot handle, or an exported file that cannot be used."""


def export_separator(
    separator: nn.Module,
    path: str | os.PathLike,
    format: str = "onnx",
    segment_frames: int = 441000,
    opset: int | None = None,
) -> Path:
    """Write `separator` as an ONNX or TorchScript file for inputs of `segment_frames` samples.

    Args:
        separator: `forward(mix[B, C, T]) -> stems[B, S, C, T]` with the attributes `sources`,
            `sample_rate` and `audio_channels`; exported in eval mode (its mode is restored).
        path: the file to write; written beside itself under a temporary name and renamed,
            so an interrupted export leaves no partial file.
        format: "onnx" (torch.onnx, dynamo exporter; run it with onnxruntime) or "torchscript"
            (`torch.jit.trace`; a program, see the module docstring).
        segment_frames: the input length the file accepts, e.g. 10 s at 44.1 kHz.
        opset: ONNX opset (default: torch.onnx's).

    Returns:
        The path written.

    Raises:
        ExportError: the separator cannot be exported (the exporter's first error line), or
            the exported file does not reproduce PyTorch's output.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    metadata = _contract(separator, segment_frames)
    if format == "onnx":
        _require("onnx", "onnxscript", "onnxruntime")
    name = type(separator).__name__
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, metadata["audio_channels"], segment_frames, generator=generator)
    # a second input, so a value baked in at tracing shows up as a mismatch
    check = torch.randn(2, metadata["audio_channels"], segment_frames, generator=generator)
    was_training = separator.training
    separator.eval()
    try:
        with torch.no_grad():
            expected = separator(check)
        if format == "onnx":
            _export_onnx(separator, example, tmp, metadata, opset)
            exported = ExportedSeparator._from_onnx(tmp, metadata, providers=None)
        else:
            traced = _trace(separator, example)
            extra = {_TORCHSCRIPT_METADATA: _dumps(metadata)}
            with _no_torchscript_deprecation():
                torch.jit.save(traced, str(tmp), _extra_files=extra)
            exported = ExportedSeparator(metadata, script=traced)
        with torch.no_grad():
            got = exported(check)
        error = (got - expected).abs().max().item()
        tolerance = VERIFY_ATOL * max(1.0, expected.abs().max().item())
        if not error <= tolerance:  # also NaN
            raise ExportError(
                f"{name}: the {format} export differs from PyTorch by {error:.3g} "
                f"(tolerance {tolerance:.3g}); not written"
            )
        with open(tmp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        separator.train(was_training)
        if tmp.exists():
            tmp.unlink()
    return path


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"ONNX needs the packages {', '.join(missing)}: pip install {' '.join(missing)} "
            "(they are in mss's dev extra)"
        )


def _contract(separator: nn.Module, segment_frames: int) -> dict[str, Any]:
    """The metadata an exported file carries: the separator contract, as plain JSON values."""
    name = type(separator).__name__
    if getattr(separator, "whole_track", False):
        raise ExportError(
            f"{name} needs the whole track at once (whole_track = True); only separators that "
            "work on segments can be exported"
        )
    missing = [a for a in ("sources", "sample_rate", "audio_channels") if not hasattr(separator, a)]
    if missing:
        raise ExportError(f"{name} has no {', '.join(missing)}: it is not an mss separator")
    if int(segment_frames) < 1:
        raise ConfigError(f"segment must be at least one sample, got {segment_frames} samples")
    return {
        "version": METADATA_VERSION,
        "model": name,
        "sources": [str(s) for s in separator.sources],
        "sample_rate": int(separator.sample_rate),
        "audio_channels": int(separator.audio_channels),
        "segment_frames": int(segment_frames),
    }


def _dumps(metadata: Mapping[str, Any]) -> str:
    return json.dumps(metadata, sort_keys=True)


def _export_onnx(
    separator: nn.Module, example: Tensor, path: Path, metadata: dict, opset: int | None
) -> None:
    name = type(separator).__name__
    progress = io.StringIO()
    try:
        # the exporter's progress lines, its advice on LSTM weights and its notes on torchvision
        # are noise to an mss user; its errors are not, and come as the exception
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(progress),
            _quiet_logger("torch.onnx"),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                separator,
                (example,),
                dynamo=True,
                input_names=["mix"],
                output_names=["stems"],
                opset_version=opset,
                verbose=False,
            )
    except Exception as error:  # noqa: BLE001 - every exporter failure means the same here
        raise ExportError(
            f"{name} cannot be exported to ONNX: {_first_error_line(error)}"
        ) from error
    # metadata_props are strings: one JSON text per key, read back by read_metadata
    program.model.metadata_props.update({f"mss.{k}": json.dumps(v) for k, v in metadata.items()})
    try:
        # one file, so that the atomic rename moves everything (ONNX keeps at most 2 GB in one)
        program.save(str(path), external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf size and I/O errors
        raise ExportError(
            f"{name}: writing the ONNX file failed: {_first_error_line(error)}"
        ) from error


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _trace(separator: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    name = type(separator).__name__
    try:
        with warnings.catch_warnings():
            # TracerWarnings say that Python values become constants: the fixed length is the
            # point, and the check on a second input catches anything else baked in
            warnings.simplefilter("ignore")
            return torch.jit.trace(separator, (example,), check_trace=False)
    except Exception as error:  # noqa: BLE001
        raise ExportError(
            f"{name} cannot be traced to TorchScript: {_first_error_line(error)}"
        ) from error


@contextlib.contextmanager
def _no_torchscript_deprecation() -> Iterator[None]:
    # said once in the module docstring, not on every save and load
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        yield


def _first_error_line(error: BaseException) -> str:
    """The line of an exporter's error that says what failed.

    torch.onnx wraps the cause in a screen of advice; its "Exception summary" section holds
    the line that names the operator.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    summary = text.split("## Exception summary", 1)
    if len(summary) == 2:
        for line in summary[1].splitlines():
            if line.strip():
                return re.sub(r"^<class '[\w.]+'>: ", "", line.strip())
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


class ExportedSeparator(nn.Module):
    """An exported separator behind the separator contract, for mss.apply's chunked path.

    `forward(mix[B, C, segment_frames]) -> stems[B, S, C, segment_frames]` runs onnxruntime or
    the TorchScript module. Attributes as a trained separator: `sources`, `sample_rate`,
    `audio_channels`, plus `segment` (seconds) and `segment_frames`: the input length it was
    exported for. Shorter input (a song shorter than one segment, which mss.apply separates in
    one call) is zero-padded to it and the stems cropped back; longer input is an error.
    Nothing in it trains.
    """

    trainable = False
    whole_track = False

    def __init__(
        self,
        metadata: Mapping[str, Any],
        session: Any = None,
        script: torch.jit.ScriptModule | None = None,
    ) -> None:
        super().__init__()
        self.metadata = dict(metadata)
        self.model = str(metadata["model"])
        self.sources = list(metadata["sources"])
        self.sample_rate = int(metadata["sample_rate"])
        self.audio_channels = int(metadata["audio_channels"])
        self.segment_frames = int(metadata["segment_frames"])
        self.segment = self.segment_frames / self.sample_rate
        self.session = session
        self.script = script  # a submodule, so .to(device) moves it
        self.format = "onnx" if session is not None else "torchscript"

    @classmethod
    def _from_onnx(
        cls, path: Path, metadata: Mapping[str, Any], providers: Sequence[str] | None
    ) -> ExportedSeparator:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # no graph-optimiser chatter on stderr
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
        )
        return cls(metadata, session=session)

    def forward(self, mix: Tensor) -> Tensor:
        """Separate segments.

        Args:
            mix (Tensor): [shape=(batch, audio_channels, frames)], frames <= segment_frames
                (shorter input is zero-padded at the end, then cropped).

        Returns:
            Tensor: [shape=(batch, len(sources), audio_channels, segment_frames)] float32, on
            the device of `mix`.
        """
        check_mix(mix, self.audio_channels)
        length = mix.shape[-1]
        if length < self.segment_frames:
            # a song shorter than one segment, which mss.apply runs in one call: zero-padded at
            # the end as mss.apply pads the last segment of a longer song
            padded = torch.nn.functional.pad(mix, (0, self.segment_frames - length))
            return self.forward(padded)[..., :length]
        if mix.shape[-1] != self.segment_frames:
            raise ValueError(
                f"this {self.format} export of {self.model} takes segments of exactly "
                f"{self.segment_frames} frames ({self.segment:g} s), got {mix.shape[-1]}; "
                f"separate with segment={self.segment:g} (mss.apply pads the track ends), or "
                "export again with the segment length you need"
            )
        if self.script is not None:
            return self.script(mix.float())
        # The graph takes one item: the exporter fixes the batch axis of these models (the
        # LSTM's initial state is built for the traced batch), so a batch runs item by item.
        array = mix.detach().float().cpu().contiguous().numpy()
        stems = [self.session.run(["stems"], {"mix": item[None]})[0] for item in array]
        return torch.from_numpy(np.concatenate(stems)).to(mix.device)

    def extra_repr(self) -> str:
        return (
            f"{self.format}, model={self.model}, sources={self.sources}, "
            f"sample_rate={self.sample_rate}, segment_frames={self.segment_frames}"
        )


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The separator contract stored in an exported file, read without running any of it.

    Returns:
        `{"format", "version", "model", "sources", "sample_rate", "audio_channels",
        "segment_frames"}`.
    Raises:
        ExportError: not a file written by `export_separator`.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"exported model not found: {path}")
    if zipfile.is_zipfile(path):
        fmt = "torchscript"
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{_TORCHSCRIPT_METADATA}")]
            if not names:
                raise ExportError(f"{path}: a zip archive without mss metadata, not an mss export")
            raw = json.loads(archive.read(names[0]))
    else:
        fmt = "onnx"
        _require("onnx")
        import onnx

        try:
            # external data are weights in other files; the metadata is in this one
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # noqa: BLE001 - protobuf errors of every kind
            raise ExportError(f"{path}: not an ONNX file or an mss export") from error
        props = {p.key: p.value for p in model.metadata_props if p.key.startswith("mss.")}
        try:
            raw = {key[len("mss.") :]: json.loads(value) for key, value in props.items()}
        except json.JSONDecodeError as error:
            raise ExportError(f"{path}: its mss metadata is not JSON") from error
    return {"format": fmt, **_check_metadata(raw, path)}


def _check_metadata(raw: Any, path: Path) -> dict[str, Any]:
    if not isinstance(raw, dict) or "version" not in raw:
        raise ExportError(f"{path}: no mss metadata in it; it was not written by mss export")
    if raw["version"] != METADATA_VERSION:
        raise ExportError(
            f"{path}: mss metadata version {raw['version']!r}; this mss reads {METADATA_VERSION}"
        )
    sources = raw.get("sources")
    ok = (
        isinstance(sources, list)
        and sources
        and all(isinstance(s, str) for s in sources)
        and isinstance(raw.get("model"), str)
        and all(
            isinstance(raw.get(k), int) and not isinstance(raw.get(k), bool) and raw[k] > 0
            for k in ("sample_rate", "audio_channels", "segment_frames")
        )
    )
    if not ok:
        raise ExportError(f"{path}: its mss metadata is incomplete or malformed: {raw}")
    keys = ("version", "model", "sources", "sample_rate", "audio_channels", "segment_frames")
    return {k: raw[k] for k in keys}


def load_exported(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    trust_code: bool = False,
) -> ExportedSeparator:
    """Load a file written by `export_separator` as a separator (eval mode).

    Args:
        path: an `.onnx` or TorchScript file; the format is read from the content.
        device: "cpu", or "cuda[:N]": onnxruntime's CUDA execution provider (an error if this
            onnxruntime has none), or the TorchScript module moved there.
        trust_code: load TorchScript, which is a program (see the module docstring). ONNX
            files are data and need no trust.

    Raises:
        ExportError: not an mss export, TorchScript without `trust_code`, or no CUDA
            execution provider in this onnxruntime.
    """
    path = Path(path)
    metadata = read_metadata(path)
    device = torch.device(device)
    if metadata["format"] == "torchscript":
        if not trust_code:
            raise ExportError(
                f"{path}: refused: a TorchScript file is a program and loading it runs its code; "
                "load it only if you trust its source (trust_code=True), or export to ONNX, "
                "which is data"
            )
        with _no_torchscript_deprecation():
            script = torch.jit.load(str(path), map_location=device)
        return ExportedSeparator(metadata, script=script).eval()
    _require("onnx", "onnxruntime")
    if device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ExportError(
                f"{path}: device={device} asks for onnxruntime's CUDAExecutionProvider, which "
                f"this onnxruntime lacks (it has {onnxruntime.get_available_providers()}); "
                "install onnxruntime-gpu or use device=cpu"
            )
        index = device.index or 0
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index})]
        providers.append("CPUExecutionProvider")
    elif device.type == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ExportError(f"device must be cpu or cuda[:N] for an ONNX export, got {device}")
    return ExportedSeparator._from_onnx(path, metadata, providers).eval()


def export_from_config(cfg: Any) -> Path:
    """`python export.py ckpt=PATH format=onnx|torchscript [output=PATH] [segment=SECONDS]`."""
    from mss.checkpoint import load_separator_from_config

    if cfg.format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    if not cfg.ckpt:
        raise CheckpointError("ckpt=PATH is required: the checkpoint train.py wrote")
    separator = load_separator_from_config(cfg, cfg.ckpt)
    if cfg.segment is None or float(cfg.segment) <= 0:
        raise ConfigError(f"segment must be a positive number of seconds, got {cfg.segment}")
    frames = max(1, int(round(float(cfg.segment) * int(separator.sample_rate))))
    ckpt = Path(cfg.ckpt)
    output = Path(cfg.output) if cfg.output else ckpt.with_suffix(FORMATS[cfg.format])
    return export_separator(separator, output, cfg.format, frames, opset=cfg.opset)
