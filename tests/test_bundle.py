"""Model bundles: kits_export writes one file, kits_inspect shows it, kits_predict runs it; bad bundles
stop with one line."""
import json
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from kitsseg import cli
from kitsseg.deploy.bundle import METADATA, open_bundle, predictor_from_bundle, write_bundle
from kitsseg.errors import KitssegError
from kitsseg.inference.predictor import Predictor

MEMBERS = {"postprocessing.json", *(f"{stage}/fold_0/{name}" for stage in ("3d_coarse", "3d_fine")
                                    for name in ("weights.safetensors", "plans.json", "network.onnx"))}


def test_bundle_holds_weights_plans_onnx_and_metadata(tiny_bundle):
    with zipfile.ZipFile(tiny_bundle) as archive:
        names = set(archive.namelist())
        metadata = json.loads(archive.read(METADATA))
    assert names == MEMBERS | {METADATA}  # no pickle, no code
    assert metadata["label_map"] == {"background": 0, "kidney": 1, "tumor": 2}
    assert metadata["folds"] == ["0"]
    assert metadata["stages"]["3d_coarse"]["spacing_mm"] == [3.0, 3.0, 3.0]  # conftest.TINY_PRESET
    assert metadata["stages"]["3d_fine"]["spacing_mm"] == [1.5, 1.5, 1.5]
    assert metadata["stages"]["3d_fine"]["patch_size"] == [32, 32, 32]
    assert metadata["intensity_normalisation"]["window_hu"] == [-200, 500]
    assert metadata["stages"]["3d_fine"]["onnx_opset"] == 17
    assert max(metadata["stages"]["3d_fine"]["onnx_logit_difference"].values()) < 1e-4
    assert set(metadata["files"]) == MEMBERS and metadata["torch_version"]


def test_inspect_prints_the_metadata(tiny_bundle, capsys):
    assert cli.inspect_main([str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "3d_fine: spacing [1.5, 1.5, 1.5] mm, patch [32, 32, 32], 3 classes" in out
    assert "labels 0 background, 1 kidney, 2 tumor" in out


def test_bundle_predicts_what_the_model_folder_predicts(tiny_models, tiny_bundle, phantom_raw):
    image = sitk.ReadImage(str(phantom_raw / "imagesTr" / "case_00000_0000.nii.gz"))
    expected = sitk.GetArrayFromImage(Predictor.from_model_dir(tiny_models, ["0"], "cpu").predict(image))
    got = sitk.GetArrayFromImage(predictor_from_bundle(tiny_bundle, "torch", device="cpu").predict(image))
    assert expected.any() and np.array_equal(got, expected)


def rewritten(bundle, tmp_path, change_metadata=None, change_members=None):
    """A copy of the bundle with metadata and members changed; hashes recomputed (unless members are
    changed after hashing, see test_altered_member)."""
    with zipfile.ZipFile(bundle) as archive:
        metadata = json.loads(archive.read(METADATA))
        members = {n: archive.read(n) for n in archive.namelist() if n != METADATA}
    metadata.pop("files")
    (change_metadata or (lambda m: None))(metadata)
    (change_members or (lambda m: None))(members)
    path = tmp_path / "changed.kitsseg.zip"
    write_bundle(path, metadata, members)
    return path


def test_altered_member_is_refused(tiny_bundle, tmp_path):
    path = tmp_path / "altered.kitsseg.zip"
    with zipfile.ZipFile(tiny_bundle) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[:-1] + b"x" if name == "3d_fine/fold_0/network.onnx" else data)
    with pytest.raises(KitssegError, match="3d_fine/fold_0/network.onnx is altered or corrupt"):
        open_bundle(path)


def test_missing_and_extra_tensors_are_named(tiny_bundle, tmp_path):
    def rename(metadata):
        tensors = metadata["tensors"]["3d_coarse"]
        tensors["head.weight_renamed"] = tensors.pop("head.weight")
    with pytest.raises(KitssegError, match=r"3d_coarse/fold_0/weights.safetensors: missing tensors "
                                           r"head.weight_renamed; extra tensors head.weight"):
        open_bundle(rewritten(tiny_bundle, tmp_path, rename))


def test_weights_that_do_not_fit_the_network_are_refused(tiny_bundle, tmp_path):
    from safetensors.numpy import load, save

    def widen(members):
        name = "3d_fine/fold_0/weights.safetensors"
        tensors = load(members[name])
        tensors["head.bias"] = np.zeros(5, np.float32)
        members[name] = save(tensors)

    def widen_manifest(metadata):
        metadata["tensors"]["3d_fine"]["head.bias"] = [5]
    path = rewritten(tiny_bundle, tmp_path, widen_manifest, widen)
    with pytest.raises(KitssegError, match=r"weights do not fit this kitsseg's 3d_fine network \(head.bias has "
                                           r"shape \[5\], expected \[3\]\)"):
        predictor_from_bundle(path, "torch", device="cpu")


def test_newer_format_and_foreign_files_get_one_line(tiny_bundle, tmp_path, capsys):
    newer = rewritten(tiny_bundle, tmp_path, lambda m: m.update(format_version=99))
    (tmp_path / "not.kitsseg.zip").write_bytes(b"PK\x03\x04 not really")
    for path, message in ((newer, "bundle format 99 was written by a newer kitsseg"),
                          (tmp_path / "not.kitsseg.zip", "not a readable model bundle")):
        code = cli.inspect_main([str(path)])
        err = capsys.readouterr().err
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_onnxruntime_engine_needs_a_bundle(tiny_models, phantom_raw, tmp_path, capsys):
    code = cli.predict_main(["-i", str(phantom_raw / "imagesTr"), "-o", str(tmp_path), "-m", str(tiny_models),
                             "--engine", "onnxruntime", "--quiet"])
    assert code == 1 and "--engine onnxruntime runs a model bundle" in capsys.readouterr().err


def test_folds_trained_with_other_plans_are_refused(tiny_bundle, tmp_path):
    def other_window(members):
        name = "3d_fine/fold_0/plans.json"
        plans = json.loads(members[name])
        plans["intensity"]["window_hu"] = [-100, 300]
        members[name] = json.dumps(plans).encode()
    with pytest.raises(KitssegError, match="fold 0 of 3d_fine was trained with other plans"):
        predictor_from_bundle(rewritten(tiny_bundle, tmp_path, change_members=other_window), "onnxruntime")


def test_a_missing_bundle_is_named_as_such(tmp_path, phantom_raw, capsys):
    code = cli.predict_main(["-i", str(phantom_raw / "imagesTr"), "-o", str(tmp_path), "-m",
                             str(tmp_path / "absent.kitsseg.zip"), "--engine", "onnxruntime", "--quiet"])
    assert code == 1 and "absent.kitsseg.zip: model bundle not found" in capsys.readouterr().err


def test_metadata_without_required_keys_gets_one_line(tiny_bundle, tmp_path):
    path = tmp_path / "bare.kitsseg.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(METADATA, json.dumps({"format": "kitsseg-model-bundle", "format_version": 1}))
    with pytest.raises(KitssegError, match="metadata.json lacks folds, tensors, files, stages, label_map"):
        open_bundle(path)
