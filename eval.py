"""Evaluate a separator: `python eval.py ckpt=PATH` or `python eval.py model=<dsp baseline>`.

Separates every track of the split in full, scores it with the SiSEC18 protocol (museval by
default), and writes per-track museval JSON plus the summary table; see mss/evaluate.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mss.evaluate import evaluate_from_config


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    try:
        summary = evaluate_from_config(cfg)
    except (ValueError, FileNotFoundError) as error:
        # Bad input (no checkpoint, model and data that disagree, a broken dataset): one clear
        # line instead of a traceback.
        raise SystemExit(f"eval.py: error: {error}") from error
    # the value a sweep (-m) would optimise: SiSEC18 SDR averaged over sources
    return float(summary.sisec18.loc["average", "SDR"])


if __name__ == "__main__":
    main()
