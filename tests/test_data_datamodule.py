"""DataModule: batches as the LightningModule sees them, workers, epochs, Hydra configs."""

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mss.data.augment import ChannelSwap, RandomGain, SignFlip
from mss.data.datamodule import MusdbDataModule, ToyDataModule
from mss.data.index import DatasetError

CONF = Path(__file__).resolve().parents[1] / "conf"


class Recorder(L.LightningModule):
    """Records the batches of a short fit; one parameter so that fit has something to do."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.train_batches, self.val_batches = [], []

    def training_step(self, batch, batch_idx):
        mix, stems = batch
        self.train_batches.append((self.current_epoch, mix, stems))
        return self.w * mix.mean()

    def validation_step(self, batch, batch_idx):
        self.val_batches.append(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(dm, epochs=2):
    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    return model


def _dm(root, validation, **kwargs):
    defaults = dict(
        validation_tracks=validation,
        segment=0.25,
        samples_per_epoch=6,
        batch_size=3,
        seed=5,
    )
    return MusdbDataModule(root, **(defaults | kwargs))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_fit_batches(tiny_musdb_root, tiny_validation_tracks, num_workers):
    dm = _dm(tiny_musdb_root, tiny_validation_tracks, num_workers=num_workers)
    model = _fit(dm)
    assert [e for e, _, _ in model.train_batches] == [0, 0, 1, 1]
    for _, mix, stems in model.train_batches:
        assert stems.shape == (3, 4, 2, 11025) and mix.shape == (3, 2, 11025)
        assert torch.equal(mix, stems.sum(1))
    # the epoch reaches the chunks, also in persistent workers
    assert not torch.equal(model.train_batches[0][2], model.train_batches[2][2])
    # val: one full track per batch, the mix read from mixture.wav
    assert len(model.val_batches) == 2  # one validation track, two epochs
    mix, stems = model.val_batches[0]
    assert mix.shape == (1, 2, 3 * 44100) and stems.shape == (1, 4, 2, 3 * 44100)
    assert torch.equal(mix, stems.sum(1))  # exact on toy data


def test_same_chunks_whatever_the_workers(tiny_musdb_root, tiny_validation_tracks):
    def chunks(num_workers):
        dm = _dm(tiny_musdb_root, tiny_validation_tracks, num_workers=num_workers)
        return torch.cat([b for b in dm.train_dataloader()])

    torch.testing.assert_close(chunks(0), chunks(2), rtol=0, atol=0)


def test_augment_in_training_only(tiny_musdb_root, tiny_validation_tracks):
    augment = [RandomGain(), ChannelSwap(), SignFlip()]
    dm = _dm(tiny_musdb_root, tiny_validation_tracks, augment=augment)
    model = _fit(dm, epochs=1)
    raw = torch.cat([b for b in dm.train_dataloader()])
    seen = torch.cat([stems for _, _, stems in model.train_batches])
    assert not torch.equal(raw, seen)
    for _, mix, stems in model.train_batches:
        assert torch.equal(mix, stems.sum(1))  # the mix follows the augmented stems
    # outside training (no trainer, or not training) stems pass through unchanged
    mix, stems = dm.on_after_batch_transfer(raw, 0)
    assert torch.equal(stems, raw) and torch.equal(mix, raw.sum(1))
    val = (torch.zeros(1, 2, 5), torch.zeros(1, 4, 2, 5))
    assert dm.on_after_batch_transfer(val, 0) is val


def test_accessors_and_test_loader(tiny_musdb_root, tiny_validation_tracks):
    dm = _dm(tiny_musdb_root, tiny_validation_tracks, sources=["vocals", "bass"])
    assert dm.sources == ["vocals", "bass"] and dm.sample_rate == 44100
    assert [t.name for t in dm.valid_tracks()] == tiny_validation_tracks
    assert len(dm.train_tracks()) == 3
    assert [t.name for t in dm.test_tracks()] == ["toy-test-00", "toy-test-01"]
    mix, stems = next(iter(dm.test_dataloader()))
    assert mix.shape == (1, 2, 3 * 44100) and stems.shape == (1, 2, 2, 3 * 44100)
    assert next(iter(dm.train_dataloader())).shape == (3, 2, 2, 11025)
    assert _dm(tiny_musdb_root, []).val_dataloader() == []


def test_bad_root_and_validation_names(tmp_path, tiny_musdb_root):
    with pytest.raises(DatasetError, match="does not exist"):
        _dm(tmp_path / "missing", []).setup("fit")
    # MUSDB's standard split by default: a clear error on other datasets
    with pytest.raises(DatasetError, match="data.validation_tracks"):
        _dm(tiny_musdb_root, None).setup("fit")


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=None, overrides=overrides)


def test_toy_config(tmp_path):
    cfg = _compose(["+data=toy", f"+paths.data_dir={tmp_path}", "data.seconds=2.0"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, ToyDataModule)
    assert [type(m) for m in dm.augment] == [RandomGain, ChannelSwap, SignFlip]
    dm.prepare_data()
    dm.setup("fit")
    assert dm.root == f"{tmp_path}/toy"
    assert [t.name for t in dm.valid_tracks()] == list(cfg.data.validation_tracks)
    assert len(dm.train_tracks()) == cfg.data.n_train - 2
    assert len(dm.test_tracks()) == cfg.data.n_test
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 4, 2, round(cfg.data.segment * 44100))


def test_musdb18hq_config(tmp_path):
    cfg = _compose(["+data=musdb18hq", f"+paths.data_dir={tmp_path}", "+seed=3"])
    dm = instantiate(cfg.data)
    assert type(dm) is MusdbDataModule
    assert dm.root == f"{tmp_path}/musdb18hq" and dm.seed == 3
    assert dm.sources == ["drums", "bass", "other", "vocals"] and dm.segment == 6.0
    assert dm.validation_tracks is None
    with pytest.raises(DatasetError, match="musdb18hq"):
        dm.setup("fit")
