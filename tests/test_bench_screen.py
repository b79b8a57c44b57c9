"""The screening script's overrides: list values stay whole and run folders stay plain strings
for Hydra."""

import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_screen import run_dir_name, variants  # noqa: E402


def test_variants_split_values_but_not_lists():
    runs = variants(
        [
            "module.optimizer.lr=3e-4,3e-3",
            "model.channels=[128,256,512],[64,128]",
            "net_overrides={a:1,b:[2,3]},{a:2}",
        ]
    )
    assert runs == [
        "module.optimizer.lr=3e-4",
        "module.optimizer.lr=3e-3",
        "model.channels=[128,256,512]",
        "model.channels=[64,128]",
        "net_overrides={a:1,b:[2,3]}",
        "net_overrides={a:2}",
    ]
    # folders of earlier runs keep their names
    assert run_dir_name(runs[0]) == "module.optimizer.lr_3e-4"


def test_variants_refuse_an_item_without_values():
    with pytest.raises(SystemExit, match="expected key=value"):
        variants(["model.bottleneck"])


@pytest.mark.parametrize(
    "override", ["module.optimizer.lr=3e-4", "model.channels=[128,256,512]", "a.b={c:1,d:[2]}"]
)
def test_run_dir_is_read_back_as_the_same_string(override):
    run_dir = f"logs/quality_screen/unet/{run_dir_name(override)}/seed1"
    parsed = OverridesParser.create().parse_override(f"hydra.run.dir={run_dir}")
    assert parsed.value() == run_dir
