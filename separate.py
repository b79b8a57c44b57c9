"""Separate songs: `python separate.py ckpt=PATH input=song.mp3` (or `model=<name>`, `onnx=PATH`).

Writes `<output_dir>/<song name>/<source>.<format>` for every song given (files, folders);
see conf/separate.yaml for the options and mss/separator.py for the Python API.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mss.cli import entry_point
from mss.separate_songs import separate_from_config


@entry_point("separate")
def main(cfg: DictConfig) -> None:
    separate_from_config(cfg)


if __name__ == "__main__":
    main()
