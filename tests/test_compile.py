"""`module.compile=true`: training runs through torch.compile (inductor, which needs a C
compiler on CPU) and writes the same checkpoints as an eager run."""

from __future__ import annotations

import shutil

import pytest
import torch

from mss.checkpoint import load_checkpoint, load_separator
from tests.test_precision import NO_VALIDATION
from tests.test_train import compose_train, tiny_overrides
from train import train


@pytest.mark.slow  # inductor compiles the forward and backward graphs: about a CPU minute
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="inductor needs a C compiler on CPU")  # fmt: skip
def test_compiled_training_writes_plain_checkpoints(
    tiny_musdb_root, tiny_validation_tracks, tmp_path, monkeypatch
):
    compiled_calls = []
    real_compile = torch.compile

    def recording_compile(fn, *args, **kwargs):
        compiled = real_compile(fn, *args, **kwargs)

        def run(*a, **k):
            compiled_calls.append(a[0].shape)
            return compiled(*a, **k)

        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    states = {}
    for compile in (False, True):
        out = tmp_path / f"compile_{compile}"
        cfg = compose_train(
            tiny_overrides(tiny_musdb_root, tiny_validation_tracks, out)
            + NO_VALIDATION
            + [
                f"module.compile={compile}",
                "trainer.max_epochs=1",
                "+trainer.limit_train_batches=2",
            ]  # fmt: skip
        )
        train(cfg)
        states[compile] = load_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]
    assert len(compiled_calls) == 2  # the two training steps of the compiled run, none eager

    assert list(states[True]) == list(states[False])
    assert all(key.startswith("net.") and "_orig_mod" not in key for key in states[True])
    # same seed, same batches: the same training up to the float reordering of fused kernels
    for key, tensor in states[True].items():
        torch.testing.assert_close(tensor, states[False][key], rtol=0, atol=1e-4)

    separator = load_separator(tmp_path / "compile_True" / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        stems = separator(0.1 * torch.randn(1, 2, 4410))
    assert stems.shape == (1, 4, 2, 4410) and stems.isfinite().all()
