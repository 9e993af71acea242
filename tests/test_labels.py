"""dataset.json labels -> the cascade's classes, and datasets as nnU-Net users have them, end to end."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from kitsseg.errors import KitssegError
from kitsseg.labels import ClassMap, class_map_from_labels
from kitsseg.paths import DatasetPaths, resolve_dataset_name
from tests.conftest import TINY_PRESET

NNUNET_KITS23 = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}


@pytest.mark.parametrize("labels, names, values", [
    ({"background": 0, "kidney": 1, "tumor": 2}, ("background", "kidney", "tumor"), (0, 1, 2)),
    (NNUNET_KITS23, ("background", "kidney", "tumor", "cyst"), (0, 1, 2, 3)),
    ({"Background": 0, "Kidney": 1, "Tumour": 2, "Cyst": 3}, ("background", "kidney", "tumor", "cyst"), (0, 1, 2, 3)),
    ({"background": 0, "Liver": 1, "Tumor": 2}, ("background", "liver", "tumor"), (0, 1, 2)),
    ({"background": 0, "pancreas": 1, "cancer": 2}, ("background", "pancreas", "cancer"), (0, 1, 2)),
    ({"background": 0, "kidney": 1, "cyst": 3}, ("background", "kidney", "cyst"), (0, 1, 3)),
    ({"background": 0, "tumor": 1, "kidney": 2}, ("background", "kidney", "tumor"), (0, 2, 1)),
])
def test_class_map(labels, names, values):
    classes = class_map_from_labels(labels)
    assert (classes.names, classes.label_values) == (names, values)
    assert classes.organ == names[1] and classes.lesions == names[2:]
    assert ClassMap.from_dict(json.loads(json.dumps(classes.to_dict()))) == classes


def test_label_values_round_trip_through_class_indices():
    classes = class_map_from_labels({"background": 0, "tumor": 1, "kidney": 2, "cyst": 7})
    file_values = np.array([[[0, 1, 2, 7]]], np.uint8)
    indices = classes.to_class_indices(file_values)
    assert indices.tolist() == [[[0, 2, 1, 3]]]  # background, tumor -> 2, kidney -> 1, cyst -> 3
    assert classes.to_label_values(indices).tolist() == file_values.tolist()


@pytest.mark.parametrize("labels, message", [
    ({"background": 0}, "no foreground label"),
    ({"kidney": 1, "tumor": 2}, "background = 0"),
    ({"background": 0, "kidney": 300}, r"outside 1-255"),
    ({"background": 0, "kidney": "1"}, "not an integer"),
    ({"background": 0, "kidney": 1.0}, "not an integer"),
    ({"background": 0, "Tumor": 2, "tumour": 3, "kidney": 1}, "repeat a name"),
    ({"background": 0, "a": [1, 2], "b": [2, 3]}, "regions 'a' and 'b' of equal size"),
])
def test_unsupported_label_sets_get_one_line(labels, message):
    with pytest.raises(KitssegError, match=message) as info:
        class_map_from_labels(labels, "ds/dataset.json")
    assert "\n" not in str(info.value) and str(info.value).startswith("ds/dataset.json: ")
    assert '"kidney": 1' in str(info.value)  # says which labels are expected


def test_numeric_dataset_ids(tmp_path):
    (tmp_path / "raw" / "Dataset220_KiTS2023").mkdir(parents=True)
    (tmp_path / "results" / "Dataset007_Other").mkdir(parents=True)
    assert resolve_dataset_name(tmp_path, "220") == "Dataset220_KiTS2023"
    assert resolve_dataset_name(tmp_path, "7") == "Dataset007_Other"  # found beside trained models too
    assert resolve_dataset_name(tmp_path, "KiTS19") == "KiTS19"
    with pytest.raises(KitssegError, match="no dataset with ID 221"):
        resolve_dataset_name(tmp_path, "221")
    (tmp_path / "raw" / "Dataset220_Copy").mkdir()
    with pytest.raises(KitssegError, match="ambiguous"):
        resolve_dataset_name(tmp_path, "220")


def _relabelled_dataset(phantom_raw, root, name, labels, mapping):
    """The phantom dataset with its label files' values remapped and dataset.json's labels replaced."""
    raw = root / "raw" / name
    shutil.copytree(phantom_raw, raw)
    for path in sorted((raw / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        out = sitk.GetImageFromArray(np.vectorize(mapping.get)(array).astype(np.uint8))
        out.CopyInformation(image)
        sitk.WriteImage(out, str(path))
    info = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**info, "labels": labels}))
    return raw


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kitsseg.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("name, labels, mapping, allowed", [
    ("Dataset220_KiTS2023", NNUNET_KITS23, {0: 0, 1: 1, 2: 2, 3: 3}, {0, 1, 2, 3}),
    ("Dataset003_Liver", {"background": 0, "Liver": 1, "Tumor": 2}, {0: 0, 1: 1, 2: 2, 3: 2}, {0, 1, 2}),
    ("Dataset004_Swapped", {"background": 0, "Tumor": 1, "Kidney": 5}, {0: 0, 1: 5, 2: 1, 3: 1}, {0, 1, 5}),
])
def test_nnunet_datasets_plan_train_and_predict(phantom_raw, tmp_path, name, labels, mapping, allowed):
    root = tmp_path / "root"
    raw = _relabelled_dataset(phantom_raw, root, name, labels, mapping)
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps(TINY_PRESET))
    number = name[7:10].lstrip("0")
    common = ["--data-root", str(root), "-d", number, "--quiet"]
    steps = [["plan_and_preprocess", "-np", "1", "--preset", str(preset)],
             *[["train", stage, "0", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1",
                "--num-workers", "0", "--device", "cpu"] for stage in ("3d_coarse", "3d_fine")],
             ["predict", "-i", str(raw / "imagesTr"), "-o", str(tmp_path / "out"), "-f", "0", "--device", "cpu"]]
    for step in steps:
        result = _cli(*step[:1], *step[1:], *common)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (step[0], result.stderr[-2000:])
    paths = DatasetPaths(root, name)
    plans = json.loads(paths.plans.read_text())
    expected = class_map_from_labels(labels)
    assert plans["classes"]["names"] == list(expected.names)
    assert plans["stages"]["3d_fine"]["num_classes"] == len(expected.names)
    cached = np.load(paths.stage_dir("3d_fine") / "case_00000_voi0.npz")["label"]
    assert set(np.unique(cached)) <= set(range(len(expected.names)))  # class indices in the cache
    for path in sorted((tmp_path / "out").glob("case_*.nii.gz")):
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))) <= allowed
    assert len(list((tmp_path / "out").glob("case_*.nii.gz"))) == 5


def test_predictor_writes_label_file_values(tiny_models):
    """Class indices leave the cascade as the dataset's own label values."""
    from kitsseg.inference.predictor import Predictor
    from kitsseg.planning import Plans

    predictor = Predictor.from_model_dir(tiny_models, ["0"], "cpu")
    data = predictor.plans.to_dict()
    data["labels"] = {"background": 0, "Kidney": 4, "Tumor": 9}
    del data["classes"]
    plans = Plans.from_dict(data)

    def coarse(x):  # foreground in the middle of the scan
        logits = torch.zeros((x.shape[0], 2, *x.shape[2:]))
        logits[:, 1, 4:-4, 4:-4, 4:-4] = 10
        return logits

    def fine(x):  # class 2 (tumour) everywhere
        logits = torch.zeros((x.shape[0], 3, *x.shape[2:]))
        logits[:, 2] = 10
        return logits

    labels = Predictor(plans, [coarse], [fine], "cpu").predict_array(np.zeros((32, 64, 64), np.int16),
                                                                    (2.0, 0.8, 0.8)).labels
    assert set(np.unique(labels)) == {0, 9}
