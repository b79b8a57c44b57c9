"""Evaluate a separator: `python eval.py ckpt=PATH` or `python eval.py model=<dsp baseline>`.

Separates every track of the split in full, scores it with the SiSEC18 protocol (museval by
default), and writes per-track museval JSON plus the summary table; see mss/evaluate.py.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mss.cli import entry_point
from mss.evaluate import evaluate_from_config


@entry_point("eval")
def main(cfg: DictConfig) -> float:
    summary = evaluate_from_config(cfg)
    # the value a sweep (-m) would optimise: SiSEC18 SDR averaged over sources
    return float(summary.sisec18.loc["average", "SDR"])


if __name__ == "__main__":
    main()
