"""Memory guard: the budget's sources, estimates that bound what is really allocated, early clear errors."""
import tracemalloc

import numpy as np
import pytest

from kitsseg.dataset import list_cases
from kitsseg.errors import KitssegError
from kitsseg.io import read_header
from kitsseg.memory import GB, MEMORY_ENV, MemoryBudget, case_input_bytes, resample_intermediate_voxels, stage_bytes
from kitsseg.planning import COARSE, DEFAULT_PRESET, FINE, load_preset, plan_experiment
from kitsseg.preprocessing import _fine_bytes, fine_boxes, preprocess_case
from kitsseg.dataset import load_case
from kitsseg.resampling import shape_at_spacing


def test_budget_sources(monkeypatch):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    assert MemoryBudget.resolve(8.0).bytes == 8 * GB
    assert MemoryBudget.resolve(8.0, workers=4).bytes == 2 * GB
    monkeypatch.setenv(MEMORY_ENV, "3")
    assert MemoryBudget.resolve().bytes == 3 * GB
    assert MemoryBudget.resolve(5.0).bytes == 5 * GB  # the option wins over the variable
    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(KitssegError, match=f"{MEMORY_ENV}='lots'"):
        MemoryBudget.resolve()
    with pytest.raises(KitssegError, match="must be positive"):
        MemoryBudget.resolve(0.0)


def test_require_names_the_file_and_the_way_out():
    MemoryBudget(2 * GB).require("scan.nii.gz", 1.9 * GB, "prediction")
    with pytest.raises(KitssegError, match=r"scan.nii.gz: prediction needs about 2.5 GB, over the memory "
                                           r"budget of 2.0 GB per case .*--memory-gb"):
        MemoryBudget(2 * GB).require("scan.nii.gz", 2.5 * GB, "prediction")


def test_intermediate_is_the_output_with_one_axis_unresampled():
    # (100, 10, 10) -> (50, 20, 20): keeping axis 0 gives 100*20*20, the largest of the three
    assert resample_intermediate_voxels((100, 10, 10), (50, 20, 20)) == 100 * 20 * 20


@pytest.fixture(scope="module")
def paper_case(phantom_raw):
    from kitsseg.fingerprint import extract_fingerprint

    info, cases = list_cases(phantom_raw)
    plans = plan_experiment(extract_fingerprint(phantom_raw, 1, quiet=True), "P", info.labels,
                            load_preset(DEFAULT_PRESET))
    return info, cases[1], plans


def _estimates(case, plans):
    props, image_bytes = read_header(case.image)
    held = case_input_bytes(props.shape, image_bytes, read_header(case.label)[1], 1)
    coarse = stage_bytes(props.shape, shape_at_spacing(props.shape, props.spacing_mm, plans.stage(COARSE).spacing_mm))
    _, label, _ = load_case(case, list_cases(case.image.parents[1])[0])
    fine = _fine_bytes(fine_boxes(label, props.spacing_mm, plans.stage(FINE)), props.spacing_mm, plans.stage(FINE))
    return props, image_bytes, held, coarse, fine


def test_estimate_bounds_what_preprocessing_allocates(paper_case, tmp_path):
    info, case, plans = paper_case
    props, image_bytes, held, coarse, fine = _estimates(case, plans)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc; SimpleITK's image buffer is not traced
    try:
        preprocess_case(case, info, plans, tmp_path)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = held + max(coarse, fine)
    untraced = np.prod(props.shape) * image_bytes
    assert traced_peak + untraced <= estimate  # an upper bound...
    assert estimate <= 4 * (traced_peak + untraced)  # ...of the right size


def test_preprocessing_stops_before_the_stage_that_does_not_fit(paper_case, tmp_path):
    info, case, plans = paper_case
    _, _, held, coarse, fine = _estimates(case, plans)
    assert fine > coarse  # 1 mm kidney boxes outweigh the 6 mm scan on this phantom
    with pytest.raises(KitssegError, match=f"{case.image}: preprocessing needs"):
        preprocess_case(case, info, plans, tmp_path / "a", memory=MemoryBudget(held + coarse - 1))
    assert not list((tmp_path / "a").rglob("*.npz"))
    with pytest.raises(KitssegError, match=f"{case.image}: the fine stage .* needs"):
        preprocess_case(case, info, plans, tmp_path / "b", memory=MemoryBudget(held + (coarse + fine) // 2))
    assert not list((tmp_path / "b" / FINE).glob("*.npz"))  # the coarse stage, which fits, was written
    assert (tmp_path / "b" / COARSE / f"{case.case_id}.npz").exists()
    assert preprocess_case(case, info, plans, tmp_path / "c", memory=MemoryBudget(held + fine)) == {COARSE: 1, FINE: 2}


def test_prediction_stops_before_the_fine_stage_that_does_not_fit():
    from kitsseg.inference.predictor import Predictor
    from kitsseg.memory import network_stage_bytes
    from tests.test_predictor import LEVEL_HU, coarse_oracle, fine_oracle, paper_plans

    plans = paper_plans(cysts=False)
    image = np.full((60, 120, 120), -LEVEL_HU, np.int16)  # background
    image[20:40, 30:70, 20:50] = 0  # one 'kidney' (label 1 encoded as 0 HU)
    spacing = (2.0, 1.0, 1.0)
    fine_calls = []

    def fine(x):
        fine_calls.append(x.shape)
        return fine_oracle(3)(x)

    coarse_shape = shape_at_spacing(image.shape, spacing, plans.stage(COARSE).spacing_mm)
    phase_one = case_input_bytes(image.shape, image.itemsize, 1) + network_stage_bytes(image.shape, coarse_shape, 2)
    predictor = Predictor(plans, [coarse_oracle], [fine], memory=MemoryBudget(phase_one))
    predictor.require_memory("scan.nii.gz", image.shape, spacing, image.itemsize)  # the header check passes
    with pytest.raises(KitssegError, match=r"scan.nii.gz: the fine stage \(kidney VOIs\) needs"):
        predictor.predict_array(image, spacing, source="scan.nii.gz")
    assert not fine_calls  # stopped before the fine network ran
    with pytest.raises(KitssegError, match="scan.nii.gz: prediction needs"):
        Predictor(plans, [coarse_oracle], [fine], memory=MemoryBudget(phase_one - 1)).require_memory(
            "scan.nii.gz", image.shape, spacing, image.itemsize)
    result = Predictor(plans, [coarse_oracle], [fine], memory=MemoryBudget(50 * phase_one)).predict_array(
        image, spacing)
    assert result.kidneys_found == 1 and fine_calls
