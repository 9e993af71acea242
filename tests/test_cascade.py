"""The cascade keeps what belongs to a kidney (#16, #20): one VOI per side of the body, every fine
component the coarse stage saw, a second coarse try, `no_kidney_found`, real image context around
the VOI, whole-VOI passes on a GPU. Oracle 'networks' (tests/test_predictor.py) on a real KiTS19
label map with painted changes (a bridge, a solitary kidney, a detached tumour lobe), and small
masks with hand-computed boxes."""
import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

from kitsseg.inference.predictor import Predictor
from kitsseg.inference.voi import find_vois
from kitsseg.planning import COARSE, FINE, IntensityConfig
from kitsseg.postprocessing import keep_kidney_component
from tests.test_predictor import LEVEL_HU, coarse_oracle, decode, dice, fine_oracle, paper_plans

# KiTS19 case_00004 (canonical 64 x 512 x 512 at 4 x 0.977 x 0.977 mm), around its kidneys: at x 79-156
# (the patient's right, no tumour) and 241-334 (tumour at x 302-334) of the crop's 400; midline x = 200
CASE, CROP = "kits19/case_00004", (slice(8, 48), slice(230, 430), slice(60, 460))
BRIDGE = (slice(20, 24), slice(60, 80), slice(150, 250))  # 16 x 20 x 98 mm across the midline


@pytest.fixture(scope="module")
def kits_labels():
    from tests.conftest import SHARED_DATA
    if not (SHARED_DATA / "kits19").is_dir():
        pytest.skip("../shared/data is absent")
    from kitsseg.io import load_volume
    labels, props = load_volume(SHARED_DATA / CASE / "segmentation.nii.gz")
    return np.ascontiguousarray(labels[CROP]), props.spacing_mm


def encode(labels: np.ndarray) -> np.ndarray:
    return (labels.astype(np.int16) * int(LEVEL_HU) - int(LEVEL_HU)).astype(np.int16)


def view_start(view: np.ndarray, base: np.ndarray) -> tuple[int, ...]:
    """Index in `base` (C-contiguous) of the first voxel of `view`, a box of it."""
    offset, start = view.__array_interface__["data"][0] - base.__array_interface__["data"][0], []
    for stride in base.strides:
        start.append(offset // stride)
        offset %= stride
    return tuple(start)


def cascade(hu: np.ndarray, spacing_mm, coarse=coarse_oracle, context_mm: float | None = None, **predict_options):
    """The oracle cascade's result and the (start, shape) of the image each fine pass was given."""
    plans = paper_plans(cysts=False)
    if context_mm is not None and hasattr(plans.stage(FINE), "inference_context_mm"):
        plans.stages[FINE] = dataclasses.replace(plans.stage(FINE), inference_context_mm=context_mm)
    crops = []

    class Recording(Predictor):
        def fine_probabilities(self, crop_hu, *args, **kwargs):
            crops.append((view_start(crop_hu, hu), crop_hu.shape))
            return super().fine_probabilities(crop_hu, *args, **kwargs)

    return Recording(plans, [coarse], [fine_oracle(3)]).predict_array(hu, spacing_mm, **predict_options), crops


# ---- oracle cascade on a real label map (#16) -----------------------------------------------------
def test_horseshoe_bridge_across_the_midline_becomes_one_voi_per_side(kits_labels):
    labels, spacing = kits_labels
    truth = labels.copy()
    truth[BRIDGE][truth[BRIDGE] == 0] = 1  # kidney tissue joining both kidneys: one horseshoe
    assert ndi.label(truth > 0, np.ones((3, 3, 3)))[1] == 1
    result, crops = cascade(encode(truth), spacing)
    assert result.kidneys_found == 2 and len(crops) == 2
    (start_right, shape_right), (start_left, shape_left) = crops
    assert start_right[2] + shape_right[2] < 260 and start_left[2] > 140  # midline 200 (+- margin and context)
    assert dice(result.labels > 0, truth > 0) > 0.99 and dice(result.labels == 2, truth == 2) > 0.95


def test_kidneys_the_coarse_net_joins_are_both_kept(kits_labels):
    """The coarse net sees a bridge (kidney-region level 0.45 > its 0.4) that the fine net calls
    background: both kidneys come out, not only the one with more coarse support."""
    labels, spacing = kits_labels
    hu = encode(labels)
    hu[BRIDGE][labels[BRIDGE] == 0] = int(0.45 * LEVEL_HU - LEVEL_HU)

    def coarse_sees_a_bridge(x):
        foreground = (decode(x) > 0.4).float() * 2 - 1
        return torch.cat([-foreground, foreground], 1) * 20

    result, _ = cascade(hu, spacing, coarse_sees_a_bridge)
    right, left = result.labels[..., :200] > 0, result.labels[..., 200:] > 0
    assert dice(right, labels[..., :200] > 0) > 0.98 and dice(left, labels[..., 200:] > 0) > 0.98


def test_solitary_kidney_gives_one_voi_and_its_labels(kits_labels):
    labels, spacing = kits_labels
    solitary = labels.copy()
    solitary[..., 200:] = 0  # the left kidney (and its tumour) removed
    result, crops = cascade(encode(solitary), spacing)
    assert result.kidneys_found == 1 and len(crops) == 1 and crops[0][0][2] + crops[0][1][2] < 200 + 30
    assert dice(result.labels > 0, solitary > 0) > 0.99 and not result.labels[..., 200:].any()


def test_tumour_lobe_detached_from_its_kidney_stays(kits_labels):
    labels, spacing = kits_labels
    truth = labels.copy()
    z, y, x = np.ogrid[: truth.shape[0], : truth.shape[1], : truth.shape[2]]
    ball = ((z - 21) * spacing[0]) ** 2 + ((y - 75) * spacing[1]) ** 2 + ((x - 65) * spacing[2]) ** 2 <= 8.0 ** 2
    truth[ball] = 2  # a 16 mm tumour lobe 6 mm lateral to the right kidney (which reaches x = 79)
    components, count = ndi.label(truth > 0, np.ones((3, 3, 3)))
    assert count == 3 and np.unique(components[ball]).size == 1  # the lobe is a component of its own
    result, _ = cascade(encode(truth), spacing)
    assert (result.labels[ball] > 0).mean() > 0.99  # the lobe is kept
    assert dice(result.labels[..., :200] == 2, ball[..., :200]) > 0.9  # as tumour (its rim: kidney, the oracle's
    # linear interpolation from 2 to 0); the right kidney has no other tumour
    assert dice(result.labels > 0, truth > 0) > 0.99


def test_coarse_output_under_one_half_gets_a_second_try(kits_labels):
    labels, spacing = kits_labels

    def unsure(x):  # kidney-region probability 0.3 on the kidneys, 0.01 elsewhere
        kidney = decode(x) > 0.5
        p = torch.where(kidney, torch.tensor(0.3), torch.tensor(0.01))
        return torch.log(torch.cat([1 - p, p], 1))

    result, _ = cascade(encode(labels), spacing, unsure)
    assert result.kidneys_found == 2 and result.coarse_threshold == 0.2
    assert dice(result.labels > 0, labels > 0) > 0.99


def test_a_coarse_mask_over_the_body_is_no_kidney_and_gets_no_fine_pass(kits_labels):
    """An untrained coarse net at the lowered threshold can mark the whole scan (the scale rehearsal's
    5-iteration model: 98% of case_00020, two 48 M-voxel VOIs); that is no kidney, not a fine pass over the scan."""
    labels, spacing = kits_labels

    def everywhere(x):  # kidney-region probability 0.3 in every voxel
        p = torch.full_like(x, 0.3)
        return torch.log(torch.cat([1 - p, p], 1))

    result, fine_calls = cascade(encode(labels), spacing, everywhere)
    assert result.kidneys_found == 0 and not result.labels.any() and fine_calls == []


def test_no_kidney_found_is_said_in_summary_and_one_warning_line(tmp_path, capsys):
    from kitsseg.inference.run import predict_inputs

    hu = np.full((40, 60, 60), -LEVEL_HU, np.int16)
    hu[10:30, 20:40, 15:35] = 0  # a 'kidney' for the fine oracle; the coarse net's probability there is 0.1
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "scan.nii.gz"))
    nothing = lambda x: torch.log(torch.cat([torch.full_like(x, 0.9), torch.full_like(x, 0.1)], 1))  # noqa: E731
    predictor = Predictor(paper_plans(cysts=False), [nothing], [fine_oracle(3)])
    assert predict_inputs(predictor, tmp_path / "scan.nii.gz", tmp_path / "out", quiet=True) == 0
    rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert rows[1].startswith("scan,no_kidney_found,0,")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "scan.nii.gz: no kidney found" in warnings[0]
    written = sitk.ReadImage(str(tmp_path / "out" / "scan.nii.gz"))
    assert written.GetSize() == (60, 60, 40) and not sitk.GetArrayFromImage(written).any()


def padded_in_z(labels: np.ndarray, slices: int) -> np.ndarray:
    return np.pad(labels, ((slices, slices), (0, 0), (0, 0)))


def test_a_coarse_region_longer_than_any_kidney_is_cut_and_kept_only_with_kidney_tissue(kits_labels):
    """case_00194 of the KiTS23 split (session 24): a coarse net marked a 360 mm region on the empty side
    of a solitary kidney and the fine net called it tumour (1.8 litres, 12 ml 'kidney'). The plans'
    longest kidney (1.5 x the fingerprint's 95th percentile: 210 mm here) cuts its VOI, and the VOI's
    labels stay only if they hold 2.5 % of the median kidney box in kidney tissue (16.5 ml here). The
    solitary kidney is untouched."""
    labels, spacing = kits_labels
    solitary = padded_in_z(labels, 30)  # 100 slices of 4 mm
    solitary[..., 200:] = 0
    scan = solitary.copy()
    scan[5:95, 80:96, 270:286] = 2  # 360 x 16 x 16 mm: the fine oracle calls it tumour, its rim (2 -> 0) kidney
    fine = paper_plans().stage(FINE)
    assert fine.max_kidney_extent_mm[0] == 210.0 and fine.min_voi_kidney_ml == 16.5
    result, crops = cascade(encode(scan), spacing, keep_probabilities=True)
    stride_mm = fine.network.stride * fine.spacing_mm[0]
    # cut: the 210 mm piece, two 12 mm margins, the stride fill and a slice of rounding (uncut: 400 mm)
    assert len(crops) == 2 and crops[1][1][0] * spacing[0] <= 210 + 2 * 12 + stride_mm + spacing[0]
    assert result.kidneys_found == 1 and not result.labels[..., 200:].any()  # 13 ml of rim 'kidney'
    assert len(result.probabilities) == 1 and result.probabilities[0][0][2].stop < 200  # only the kept VOI's
    assert dice(result.labels > 0, solitary > 0) > 0.99

    scan[40:46, 75:100, 265:290] = 1  # 14 ml of kidney tissue on the region: now it stays, cut
    result, _ = cascade(encode(scan), spacing)
    left_slices = np.flatnonzero(result.labels[..., 200:].any(axis=(1, 2)))
    assert result.kidneys_found == 2 and (left_slices[-1] + 1 - left_slices[0]) * spacing[0] <= 210 + 2 * 12
    assert dice(result.labels[..., :200] > 0, solitary[..., :200] > 0) > 0.99


def test_false_pieces_in_a_row_longer_than_any_kidney_are_cut_together_and_dropped(kits_labels):
    """case_00194 of the KiTS23 split again (session 26): the coarse net marked two pieces in a row on
    the empty side, each shorter than the plans' longest kidney (210 mm here) but 368 mm together; the
    second joined the first's VOI (the tumour-lobe rule), so the VOI was 285 mm long, not cut, and its
    708 ml of false tumour stayed. Joined pieces are now cut as one piece and dropped without kidney tissue."""
    labels, spacing = kits_labels
    solitary = padded_in_z(labels, 30)
    solitary[..., 200:] = 0
    scan = solitary.copy()
    scan[3:48, 80:96, 270:286] = 2  # 180 mm, then a 20 mm gap (the grown boxes meet), then 168 mm
    scan[53:95, 80:96, 270:286] = 2
    assert ndi.label(scan[..., 200:] > 0, np.ones((3, 3, 3)))[1] == 2
    result, crops = cascade(encode(scan), spacing)
    assert result.kidneys_found == 1 and not result.labels[..., 200:].any()
    assert dice(result.labels > 0, solitary > 0) > 0.99


def test_a_false_region_of_kidney_length_without_kidney_tissue_goes_beside_a_kidney_and_stays_alone(kits_labels):
    """case_00194 once more (session 26): the joined false pieces were 253 mm, within the longest kidney
    at the coarse grid's rounding, and held 0 ml of kidney. Every VOI needs the plans' kidney tissue
    (16.5 ml here) while another VOI of the scan has it; a scan whose VOIs all lack it keeps them."""
    labels, spacing = kits_labels
    solitary = padded_in_z(labels, 30)
    solitary[..., 200:] = 0
    scan = solitary.copy()
    scan[30:70, 80:96, 270:286] = 2  # 160 mm: no cut; the fine oracle's rim 'kidney' is about 6 ml
    result, _ = cascade(encode(scan), spacing, keep_probabilities=True)
    assert result.kidneys_found == 1 and not result.labels[..., 200:].any()
    assert len(result.probabilities) == 1 and result.probabilities[0][0][2].stop < 200
    assert dice(result.labels > 0, solitary > 0) > 0.99

    alone = np.zeros_like(scan)
    alone[30:70, 80:96, 270:286] = 2
    result, _ = cascade(encode(alone), spacing)
    assert result.kidneys_found == 1 and dice(result.labels > 0, alone > 0) > 0.8


def test_a_kidney_joined_to_a_long_false_region_keeps_its_voi(kits_labels):
    """A coarse-only region (level 0.45: the coarse net sees it, the fine net calls it background) runs
    400 mm along z through the right kidney: the piece is cut to the window that holds the kidney."""
    labels, spacing = kits_labels
    truth = padded_in_z(labels, 30)
    hu = encode(truth)
    tube = (slice(0, 100), slice(100, 125), slice(100, 125))  # 25 x 24 x 24 mm: inside the right kidney's box
    hu[tube][truth[tube] == 0] = int(0.45 * LEVEL_HU - LEVEL_HU)

    def coarse_sees_the_tube(x):
        foreground = (decode(x) > 0.4).float() * 2 - 1
        return torch.cat([-foreground, foreground], 1) * 20

    assert ndi.label((truth > 0) | (hu > -LEVEL_HU), np.ones((3, 3, 3)))[1] == 2  # the tube joins the right kidney
    result, _ = cascade(hu, spacing, coarse_sees_the_tube)
    assert result.kidneys_found == 2
    assert dice(result.labels[..., :200] > 0, truth[..., :200] > 0) > 0.98
    assert dice(result.labels > 0, truth > 0) > 0.98


# ---- VOIs from the coarse mask (#20): hand-computed boxes -------------------------------------------
# coarse grid 6 mm, original grid 3 mm (two voxels per coarse voxel), margin 6 mm (two original voxels)
def vois(mask, midline_x=None):
    return find_vois(mask, (6.0, 6.0, 6.0), [2 * n for n in mask.shape], (3.0, 3.0, 3.0), (6.0, 6.0, 6.0), midline_x)


def box(*bounds):
    return tuple(slice(a, b) for a, b in bounds)


def test_three_or_more_components_one_voi_per_side_near_pieces_join_far_ones_go():
    mask = np.zeros((20, 20, 40), bool)
    mask[2:6, 2:6, 4:10] = True  # right kidney (x < 20): coarse box z 2-6, y 2-6, x 4-10
    mask[2:4, 7:9, 4:6] = True  # a piece 1 coarse voxel away: grown boxes meet, it joins
    mask[15:18, 15:18, 4:7] = True  # a 27-voxel false positive far below: dropped
    mask[4:8, 4:8, 28:33] = True  # left kidney
    assert ndi.label(mask, np.ones((3, 3, 3)))[1] == 4
    assert vois(mask) == [box((2, 14), (2, 20), (6, 22)), box((6, 18), (6, 18), (54, 68))]


def test_a_piece_longer_than_the_longest_kidney_is_cut_to_the_window_holding_most_of_it():
    mask = np.zeros((30, 10, 20), bool)
    mask[0:30, 4:5, 4:5] = True  # a 180 mm thin false region (one voxel across) ...
    mask[12:18, 2:7, 2:7] = True  # ... through a kidney-like blob of 6 x 5 x 5 voxels
    limit = (60.0, 60.0, 60.0)  # 10 coarse voxels: the windows from z 8-18 to 12-22 hold the blob and 4 more
    cut = find_vois(mask, (6.0, 6.0, 6.0), [2 * n for n in mask.shape], (3.0, 3.0, 3.0), (6.0, 6.0, 6.0),
                    max_extent_mm=limit)
    assert cut == [box((14, 38), (2, 16), (2, 16))]  # z 8-18 (the first of five), grown by the margin
    assert vois(mask) == [box((0, 60), (2, 16), (2, 16))]  # no limit: the whole region


def test_joined_pieces_longer_together_than_the_longest_kidney_are_cut_as_one():
    mask = np.zeros((30, 10, 20), bool)
    mask[0:8, 4:5, 4:5] = True  # 48 mm, then a one-voxel gap (the grown boxes meet) ...
    mask[9:17, 3:6, 3:6] = True  # ... and a 48 mm piece of 9 voxels per slice: 102 mm joined
    limit = (60.0, 60.0, 60.0)  # 10 coarse voxels: the window z 7-17 holds 73 voxels, z 8-18 72, z 6-16 65
    cut = find_vois(mask, (6.0, 6.0, 6.0), [2 * n for n in mask.shape], (3.0, 3.0, 3.0), (6.0, 6.0, 6.0),
                    max_extent_mm=limit)
    assert cut == [box((12, 36), (4, 14), (4, 14))]  # z 7-17, y and x 3-6, grown by the margin
    assert vois(mask) == [box((0, 36), (4, 14), (4, 14))]  # no limit: both pieces' grown boxes


def test_components_under_the_size_floor_are_ignored():
    mask = np.zeros((10, 10, 20), bool)
    mask[1, 1, 1:5] = True  # 4 voxels of 0.216 ml: 0.86 ml, under the 1 ml floor
    mask[6, 6, 11:16] = True  # 5 voxels: 1.08 ml
    assert vois(mask) == [box((10, 16), (10, 16), (20, 34))]
    mask[6, 6, 11] = False
    assert vois(mask) == []


def test_equal_components_on_one_side_the_first_in_scan_order_makes_the_voi():
    mask = np.zeros((20, 20, 40), bool)
    mask[14:16, 2:4, 2:4] = True
    mask[2:4, 14:16, 14:16] = True  # same size, first in (z, y, x) order: label 1
    assert vois(mask) == [box((2, 10), (26, 34), (26, 34))]


def test_a_component_spanning_the_midline_is_cut_there_unless_one_side_holds_little():
    mask = np.zeros((10, 10, 40), bool)
    mask[2:6, 2:6, 10:30] = True  # a bar from x 10 to 30, midline 20: halves of 10 voxels
    assert vois(mask) == [box((2, 14), (2, 14), (18, 42)), box((2, 14), (2, 14), (38, 62))]
    assert vois(mask, midline_x=28.0) == [box((2, 14), (2, 14), (18, 62))]  # 2 of 20 columns beyond: 10% < 20%


def test_body_midline_is_the_median_body_column_not_the_scan_centre():
    from kitsseg.kidney_sides import body_midline_x

    image = np.full((4, 10, 40), -1000.0, np.float32)
    image[:, 2:8, 4:20] = -100.0  # a body (fat) off the scan's centre (x 4 to 20)
    assert body_midline_x(image) == 12.0  # the scan's centre: 20
    image[1, 5, 36] = 300.0  # an arm or a table edge: one voxel moves the median by half a column
    assert body_midline_x(image) == 12.5


def test_overlapping_vois_both_paste_their_kidneys():
    hu = np.full((30, 40, 48), -LEVEL_HU, np.int16)
    hu[8:20, 10:30, 12:22] = 0  # right 'kidney', x 12-22 at 3 mm; its VOI (12 mm margin) reaches x 26
    hu[10:22, 10:30, 25:35] = 0  # left 'kidney' 9 mm away, across the midline (x 24); its VOI starts at x 22
    hu[12:16, 14:20, 14:18] = LEVEL_HU  # a tumour in the right one
    result, crops = cascade(hu, (3.0, 3.0, 3.0), context_mm=0.0)
    (a, shape_a), (b, _) = crops
    assert result.kidneys_found == 2 and b[2] < a[2] + shape_a[2]  # the VOIs overlap along x
    truth = (hu + LEVEL_HU) // LEVEL_HU
    assert np.array_equal(result.labels, truth)


# ---- keeping fine components (#16, #20) ----------------------------------------------------------
def test_components_mostly_in_the_coarse_mask_are_kept_else_the_largest():
    labels = np.zeros((1, 1, 12), np.uint8)
    labels[..., 0:3], labels[..., 4:6], labels[..., 7:9], labels[..., 10:12] = 1, 2, 1, 1
    support = np.zeros_like(labels, bool)
    support[..., [4, 11]] = True
    assert keep_kidney_component(labels, support).tolist() == [[[0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 1]]]
    # nothing touches the mask: the largest; among equal sizes (2, 2, 2) the first
    assert keep_kidney_component(labels, np.zeros_like(support)).tolist() == [[[1, 1, 1] + [0] * 9]]
    labels[..., 2] = 0
    assert keep_kidney_component(labels).tolist() == [[[1, 1] + [0] * 10]]


def test_a_false_region_that_only_touches_the_coarse_mask_edge_goes():
    """A fine net's false region in a neighbouring organ, larger than the kidney and reaching into the
    coarse mask's blurred edge, goes; the kidney and a detached lobe inside the mask stay."""
    labels = np.zeros((1, 1, 30), np.uint8)
    labels[..., 0:8] = 1  # the kidney, inside the mask
    labels[..., 10:12] = 2  # a detached tumour lobe, inside the mask
    labels[..., 14:30] = 2  # a false region: 3 of its 16 voxels inside the mask
    support = np.zeros_like(labels, bool)
    support[..., 0:17] = True
    assert keep_kidney_component(labels, support).tolist() == [[[1] * 8 + [0, 0, 2, 2] + [0] * 18]]


# ---- padding value, context, whole-VOI passes (#16) -------------------------------------------------
def test_fine_passes_pad_with_what_air_normalises_to():
    intensity = IntensityConfig("percentile", (-100.0, 300.0), 100.0, 50.0)  # air: -4, not -1
    plans = dataclasses.replace(paper_plans(cysts=False), intensity=intensity)
    hu = np.full((30, 40, 41), 100, np.int16)  # normalises to 0, so padding stands out (x: 70 mm per VOI)
    seen = []

    def fine(x):
        seen.append(x.clone())
        return fine_oracle(3)(x)

    everywhere = lambda x: torch.cat([-torch.ones_like(x), torch.ones_like(x)], 1) * 20  # noqa: E731
    Predictor(plans, [everywhere], [fine]).predict_array(hu, (2.0, 2.0, 2.0))
    assert seen and seen[0].shape[-1] % 16 == 0  # the right half of the body (a VOI) at 1 mm, padded to the stride
    assert float(seen[0][..., -1].max()) == -4.0 and float(seen[0][..., 0, 0, 0]) == 0.0


def test_the_fine_pass_sees_the_voi_grown_by_its_context_and_labels_stay_in_the_voi():
    hu = np.full((42, 42, 60), -LEVEL_HU, np.int16)
    hu[15:27, 15:27, 9:21] = 0  # the kidney, at 2 mm: its VOI (12 mm margin) is z, y 9-33, x 3-27
    hu[17:25, 17:25, 21:40] = int(0.6 * LEVEL_HU - LEVEL_HU)  # level 0.6, joined to it, beyond the VOI

    def coarse(x):  # sees level 1 only
        foreground = (decode(x) > 0.8).float() * 2 - 1
        return torch.cat([-foreground, foreground], 1) * 20

    def fine(x):  # calls the region kidney as well
        kidney = (decode(x) > 0.3).float()
        return torch.cat([1 - kidney, kidney, torch.zeros_like(kidney)], 1) * 20

    plans, crops = paper_plans(cysts=False), []
    expected = np.zeros(hu.shape, np.uint8)
    expected[15:27, 15:27, 9:21] = expected[17:25, 17:25, 21:27] = 1
    for context_mm, seen in ((0.0, ((9, 9, 3), (24, 24, 24))), (16.0, ((1, 1, 0), (40, 40, 35)))):
        if hasattr(plans.stage(FINE), "inference_context_mm"):
            plans.stages[FINE] = dataclasses.replace(plans.stage(FINE), inference_context_mm=context_mm)

        class Recording(Predictor):
            def fine_probabilities(self, crop_hu, *args, **kwargs):
                crops.append((view_start(crop_hu, hu), crop_hu.shape))
                return super().fine_probabilities(crop_hu, *args, **kwargs)

        result = Recording(plans, [coarse], [fine]).predict_array(hu, (2.0, 2.0, 2.0))
        assert crops.pop() == seen  # 8 voxels of 2 mm more on each side, clipped at x = 0
        assert np.array_equal(result.labels, expected)  # the region beyond the VOI stays unlabelled


def test_a_gpu_passes_a_voi_whole_when_its_free_memory_holds_it(monkeypatch):
    plans = paper_plans(cysts=False)
    fine, voi = plans.stage(FINE), (187, 151, 248)  # case_00151's kidney VOI at 1 mm: 7.9 M voxels padded
    free = {"bytes": 40 * 2 ** 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 * 2 ** 30))
    gpu = Predictor(plans, [coarse_oracle], [fine_oracle(3)], device="cuda")
    assert gpu._pass_plan(fine, voi, 0)[0] is None  # one pass (5 GB of 40 free)
    free["bytes"] = 2 * 2 ** 30
    assert gpu._pass_plan(fine, voi, 0)[0] is not None  # tiles beyond what is free
    cpu = Predictor(plans, [coarse_oracle], [fine_oracle(3)], device="cpu")
    assert cpu._pass_plan(fine, voi, 0)[0] is not None  # a CPU keeps the 2 GB peak target: tiles
    assert cpu._pass_plan(plans.stage(COARSE), (50, 70, 70), 0)[0] is None


def test_the_voi_is_grown_with_real_image_up_to_the_stride_multiple_the_pass_would_pad_to():
    plans = paper_plans(cysts=False)  # fine: 1 mm, stride 16
    plans.stages[FINE] = dataclasses.replace(plans.stage(FINE), inference_context_mm=0.0)
    predictor = Predictor(plans, [coarse_oracle], [fine_oracle(3)])
    box = (slice(100, 232), slice(150, 266), slice(50, 159))  # 132 x 116 x 109 at 1 mm: padded to 144 x 128 x 112
    assert predictor._with_context(box, (400, 512, 512), (1.0, 1.0, 1.0)) == (
        slice(94, 238), slice(144, 272), slice(49, 160))  # 144 x 128 x 111: the padded shape, of real image
    # 3 mm slices: 44 slices (132 mm) grow to 48 (144 mm); in-plane clipped at the scan's start
    assert predictor._with_context((slice(2, 46), slice(0, 116), slice(0, 109)), (100, 512, 512), (3.0, 1.0, 1.0)) == (
        slice(0, 48), slice(0, 122), slice(0, 110))
    plans.stages[FINE] = dataclasses.replace(plans.stage(FINE), inference_context_mm=4.0)
    assert Predictor(plans, [coarse_oracle], [fine_oracle(3)])._with_context(box, (400, 512, 512), (1.0, 1.0, 1.0)) == (
        slice(94, 238), slice(144, 272), slice(41, 168))  # x: 4 mm per side, then 117 -> 127 (odd: 1 padded)
