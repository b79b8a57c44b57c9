"""Non-trainable DSP baselines (``trainable = False``, no parameters).

``hpss_repet.HPSSRepet`` (HPSS + REPET-SIM) and ``hpss_nmf.HPSSNMF`` (HPSS + band-wise
NMF), configured by conf/model/hpss_repet.yaml and hpss_nmf.yaml; ``repet_sim`` holds the
fast REPET-SIM filter they build on.
"""

from mss.models.dsp.hpss_nmf import HPSSNMF
from mss.models.dsp.hpss_repet import HPSSRepet

__all__ = ["HPSSNMF", "HPSSRepet"]
