"""Export a trained separator: `python export.py ckpt=PATH format=onnx|torchscript`.

Writes one file (default `<ckpt stem>.onnx` or `.pt` beside the checkpoint) that separates
segments of `segment` seconds, checked against PyTorch before it is written; see mss/export.py.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from mss.cli import entry_point
from mss.export import export_from_config

log = logging.getLogger(__name__)


@entry_point("export")
def main(cfg: DictConfig) -> str:
    path = export_from_config(cfg)
    log.info("wrote %s", path)
    print(path)
    return str(path)


if __name__ == "__main__":
    main()
