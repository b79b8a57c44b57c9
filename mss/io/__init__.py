"""The audio boundary of separation: read any song in blocks, resample, write stems atomically.

- `read`: `probe` a file, `read_blocks` (float32 ``[C, n]`` blocks, memory flat in the song's
  length), `read_audio` (whole file). libsndfile first, ffmpeg for the rest.
- `resample`: soxr, block by block or in one piece, with an exact output length.
- `write`: `StemWriter` / `StemSetWriter` (atomic, wav/flac/mp3, clamp/rescale/none).
"""

from mss.io.read import AudioInfo, probe, read_audio, read_blocks
from mss.io.resample import StreamResampler, resample, resample_blocks, resampled_length
from mss.io.write import OutputFormat, StemReport, StemSetWriter, StemWriter, check_output_folder

__all__ = [
    "AudioInfo",
    "OutputFormat",
    "StemReport",
    "StemSetWriter",
    "StemWriter",
    "StreamResampler",
    "check_output_folder",
    "probe",
    "read_audio",
    "read_blocks",
    "resample",
    "resample_blocks",
    "resampled_length",
]
