"""Separators behind one contract: ``forward(mix[B, C, T]) -> stems[B, S, C, T]``.

One architecture per module, each built from ``conf/model/<name>.yaml`` via ``_target_``:

- ``simple_demucs.SimpleDemucs``: time-domain U-Net with a BiLSTM bottleneck (2.7 M).
- ``unet.UNet``: spectrogram-mask U-Net with a BiLSTM bottleneck, optional Wiener filter.
- ``hdemucs.HDemucs``: torchaudio's Hybrid Demucs (low/medium/high presets, or pretrained).
- ``openunmix.OpenUnmix``, ``htdemucs.HTDemucs``, ``bs_roformer.BSRoformer``: the field's
  peers built from their own packages (``openunmix``, ``demucs``, ``bs-roformer``).
- ``dsp/``: the non-trainable DSP baselines.

``_stft`` holds the one STFT/iSTFT pair the spectral models share and ``_wiener`` the
multichannel Wiener filter. Submodules are not imported here, so importing one model never
pulls in the others' dependencies.
"""
