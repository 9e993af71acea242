"""Shared fixtures: small phantoms made here, and the read-only ../shared/data when present."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
KITS19_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "kits19").is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def make_image(array: np.ndarray, spacing_xyz=(1.0, 0.8, 0.8), origin_xyz=(10.0, -20.0, 30.0),
               direction=KITS19_DIRECTION) -> sitk.Image:
    """A SimpleITK image of a raw (k, j, i) array with the given geometry."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin_xyz)
    image.SetDirection(direction)
    return image


@pytest.fixture(scope="session")
def phantom_raw(tmp_path_factory) -> Path:
    """A 5-case phantom dataset (small volumes) in the raw format."""
    from dataset_conversion.phantom import PhantomConfig, write_phantom_dataset

    raw = tmp_path_factory.mktemp("phantom") / "raw" / "Phantom"
    write_phantom_dataset(raw, 5, seed=1, config=PhantomConfig(shape=(32, 64, 64)), quiet=True)
    return raw


TINY_NETWORK = {"stem_channels": 4, "down_channels": [8, 16, 32, 64], "down_blocks": [1, 1, 1, 1],
                "up_channels": [64, 32, 16, 8], "up_blocks": [1, 1, 1, 1], "bottleneck_min_channels": 16}
TINY_PRESET = {"intensity": {"scheme": "window", "window_hu": [-200, 500]},
               "stages": {"3d_coarse": {"spacing_mm": [3, 3, 3], "patch_size": [32, 32, 32], "batch_size": 2,
                                        "network": TINY_NETWORK},
                          "3d_fine": {"spacing_mm": [1.5, 1.5, 1.5], "patch_size": [32, 32, 32], "batch_size": 2,
                                      "network": TINY_NETWORK}}}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    from dataset_conversion.phantom import PhantomConfig, write_phantom_dataset
    from kitsseg.paths import DatasetPaths
    from kitsseg.plan_and_preprocess import plan_and_preprocess

    root = tmp_path_factory.mktemp("train")
    paths = DatasetPaths(root, "Phantom")
    write_phantom_dataset(paths.raw, 6, seed=2, config=PhantomConfig(shape=(32, 64, 64)), quiet=True)
    preset = root / "tiny.json"
    preset.write_text(json.dumps(TINY_PRESET))
    plan_and_preprocess(paths, num_workers=1, preset=preset, quiet=True)
    return paths


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Untrained tiny checkpoints of both stages (fold 0), planned for phantom-like scans."""
    import torch

    from kitsseg.checkpoint import save_checkpoint
    from kitsseg.fingerprint import Fingerprint
    from kitsseg.network.vbnet import VBNet
    from kitsseg.planning import COARSE, FINE, plan_experiment

    # kidneys' 95th percentile x 1.5 beyond the 78 x 51 x 51 mm scans: the untrained coarse net's pieces are never cut
    fingerprint = Fingerprint({}, (2.0, 0.8, 0.8), (32, 64, 64), {k: 0.0 for k in ("mean", "std", "min", "max",
                              "percentile_00_5", "percentile_99_5")}, {"median": [40.0, 25.0, 20.0],
                              "percentile_95": [60.0, 40.0, 40.0]}, (0, 1, 2))
    plans = plan_experiment(fingerprint, "P", {"background": 0, "kidney": 1, "tumor": 2}, TINY_PRESET)
    root = tmp_path_factory.mktemp("models")
    for stage in (COARSE, FINE):
        torch.manual_seed(0)
        save_checkpoint({"state_dict": VBNet(plans.stage(stage).network).state_dict(), "plans": plans.to_dict(),
                         "stage": stage, "epoch": 0}, root / stage / "fold_0" / "checkpoint_final.pt")
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tiny_models, tmp_path_factory) -> Path:
    """tiny_models exported as a model bundle (weights, plans, ONNX networks)."""
    from kitsseg.deploy.export import export_bundle

    path = tmp_path_factory.mktemp("bundle") / "tiny.kitsseg.zip"
    export_bundle(tiny_models, path, report=lambda line: None)
    return path
