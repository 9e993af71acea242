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
    from tests.test_predictor import LEVEL_HU, coarse_oracle, fine_oracle, paper_plans

    plans = paper_plans(cysts=False)
    image = np.full((60, 120, 120), -LEVEL_HU, np.int16)  # background
    image[20:40, 30:70, 20:50] = 0  # one 'kidney' (label 1 encoded as 0 HU)
    spacing = (2.0, 1.0, 1.0)
    fine_calls = []

    def fine(x):
        fine_calls.append(x.shape)
        return fine_oracle(3)(x)

    # Budgets in known figures, not the estimator's: a paper VB-Net pass takes ~0.15 GB plus 610-620 B per
    # voxel (measured 617-619 for the 4-class one). Coarse: 20^3 voxels at 6 mm, one pass over 32^3 (stride
    # 16): 0.17 GB, + 2.6 MB of the scan's arrays. Fine: a pass is at least half a 96^3 patch (48^3 voxels):
    # 0.15 GB + 48^3 x 614 B = 0.218 GB.
    predictor = Predictor(plans, [coarse_oracle], [fine], memory=MemoryBudget(0.19 * GB))
    predictor.require_memory("scan.nii.gz", image.shape, spacing, image.itemsize)  # the header check passes
    with pytest.raises(KitssegError, match=r"scan.nii.gz: the fine stage \(kidney VOIs\) needs about 0.2 GB"):
        predictor.predict_array(image, spacing, source="scan.nii.gz")
    assert not fine_calls  # stopped before the fine network ran
    with pytest.raises(KitssegError, match="scan.nii.gz: prediction needs about 0.2 GB"):
        Predictor(plans, [coarse_oracle], [fine], memory=MemoryBudget(0.16 * GB)).require_memory(
            "scan.nii.gz", image.shape, spacing, image.itemsize)
    result = Predictor(plans, [coarse_oracle], [fine], memory=MemoryBudget(1.0 * GB)).predict_array(
        image, spacing)
    assert result.kidneys_found == 1 and fine_calls


def test_pass_allowance_is_the_budget_capped_at_the_peak_target():
    from kitsseg.memory import PEAK_TARGET_BYTES, RUNTIME_BYTES, pass_allowance

    assert pass_allowance(None, 10 ** 8) == PEAK_TARGET_BYTES - RUNTIME_BYTES - 10 ** 8
    assert pass_allowance(MemoryBudget(100 * GB), 0) == PEAK_TARGET_BYTES - RUNTIME_BYTES
    assert pass_allowance(MemoryBudget(0.5 * GB), 10 ** 8) == 0.4 * GB
    assert pass_allowance(MemoryBudget(0.5 * GB), GB) == 0


MEASURE_PASS = """
import sys, torch
from kitsseg.inference.torch_engine import fold_batch_norms
from kitsseg.network.vbnet import VBNet
from kitsseg.planning import FINE
from kitsseg.profiling import Profile
from tests.test_predictor import paper_plans

network, profile = fold_batch_norms(VBNet(paper_plans().stage(FINE).network).eval()), Profile()
with torch.no_grad():
    network(torch.zeros(1, 1, 16, 16, 16))  # one-off allocations (weight layouts, thread pools)
    with profile.stage("before"):
        pass
    with profile.stage("pass"):
        network(torch.zeros(1, 1, *map(int, sys.argv[1:4])))
print(None if profile.peak["pass"] is None else profile.peak["pass"] - profile.peak["before"])
"""


def test_network_pass_estimate_bounds_a_folded_vbnet_forward():
    import subprocess
    import sys

    from kitsseg.memory import network_pass_bytes
    from tests.conftest import REPO
    from tests.test_predictor import paper_plans

    shape = (64, 64, 96)  # in a fresh process: memory freed by other tests would hide the pass's own
    out = subprocess.run([sys.executable, "-c", MEASURE_PASS, *map(str, shape)], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()[-1]
    if out == "None":
        pytest.skip("the peak resident set cannot be reset here (/proc/self/clear_refs)")
    measured = int(out)
    assert measured <= network_pass_bytes(paper_plans().stage(FINE).network, shape) <= 1.5 * measured


def test_a_large_voi_is_tiled_to_stay_within_the_peak_target_and_a_small_one_is_one_pass():
    from kitsseg.inference.predictor import Predictor
    from kitsseg.memory import PEAK_TARGET_BYTES, RUNTIME_BYTES, network_stage_bytes
    from tests.test_predictor import coarse_oracle, fine_oracle, paper_plans

    predictor = Predictor(paper_plans(), [coarse_oracle], [fine_oracle(4)])
    fine = predictor.plans.stage(FINE)
    image_bytes = 1059 * 512 * 512 * 2  # case_00151: a (374, 187, 306) VOI, (187, 151, 248) at 1 mm
    held = image_bytes + 374 * 187 * 306 + network_stage_bytes((374, 187, 306), (187, 151, 248), 4)
    tile, pass_bytes = predictor._pass_plan(fine, (187, 151, 248), held)
    assert tile is not None and RUNTIME_BYTES + held + pass_bytes <= PEAK_TARGET_BYTES
    assert predictor._pass_plan(fine, (144, 97, 91), 10 ** 8)[0] is None
    smaller, _ = Predictor(paper_plans(), [coarse_oracle], [fine_oracle(4)], memory=MemoryBudget(GB))._pass_plan(
        fine, (187, 151, 248), held)
    assert np.prod(smaller) < np.prod(tile)  # a budget below the target: smaller tiles


def test_on_a_gpu_passes_are_planned_against_its_free_memory(monkeypatch):
    import torch

    from kitsseg.inference.predictor import Predictor
    from tests.test_predictor import coarse_oracle, fine_oracle, paper_plans

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * 10 ** 9, 80 * 10 ** 9))
    predictor = Predictor(paper_plans(), [coarse_oracle], [fine_oracle(4)], device="cuda")
    assert predictor._pass_plan(predictor.plans.stage(FINE), (187, 151, 248), GB) == (None, 0)  # no host memory


def test_release_freed_memory_returns_freed_heap_pages():
    import ctypes
    import os
    from pathlib import Path

    from kitsseg.memory import release_freed_memory

    try:
        ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        pytest.skip("not glibc")

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # 200 MB of heap blocks, below the mmap threshold
    above = bytearray(64 * 1024)  # keeps the heap's top in use: free() alone returns nothing
    del blocks
    before = rss()
    release_freed_memory()
    assert before - rss() > 100e6
    del above
