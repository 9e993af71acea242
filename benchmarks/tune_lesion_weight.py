"""Choose the class decision's lesion weight on a validation folder, with trained models.

    python benchmarks/tune_lesion_weight.py --images bench_work/val15_2mm/val/images \
        --labels bench_work/val15_2mm/val/labels \
        --models bench_work/val15_2mm/models/baseline_s0 bench_work/val15_2mm/models/baseline_s1

Each model folder is a cascade (3d_coarse and 3d_fine, every fold found). Per case the network
passes run once; every weight then decides the classes from the same probabilities with
kits_predict's cascade and postprocessing, so the weights differ in the decision alone. Prints each
case's tumour Dice per weight and, per model and weight, the mean kidney, masses and tumour Dice and
the lowest case's kidney Dice; writes every row to --out (JSON).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from kitsseg.evaluation import REGIONS, dice, load_label_map
from kitsseg.inference.predictor import Predictor
from kitsseg.io import case_id_of, load_volume
from kitsseg.postprocessing import PostprocessConfig

WEIGHTS = (1.0, 1.25, 1.5, 2.0, 3.0)


class ReusedPasses:
    """Makes a predictor run each stage's networks once per image: later calls on the same array (or the
    same box of it: same memory, shape and strides) reuse the probabilities, so only the decision is
    computed again. `cache.clear()` before the next image."""

    def __init__(self, predictor: Predictor):
        self.predictor, self.cache = predictor, {}
        coarse, fine = predictor.coarse_probabilities, predictor.fine_probabilities
        predictor.coarse_probabilities = lambda image, *a: self._once("coarse", coarse, image, *a)
        predictor.fine_probabilities = lambda image, *a: self._once("fine", fine, image, *a)

    def _once(self, stage: str, compute, image: np.ndarray, *args):
        key = (stage, image.__array_interface__["data"][0], image.shape, image.strides)
        if key not in self.cache:
            self.cache[key] = compute(image, *args)
        return self.cache[key]

    def labels(self, image_hu: np.ndarray, spacing_mm, weight: float) -> np.ndarray:
        self.predictor.postprocess = dataclasses.replace(self.predictor.postprocess, lesion_weight=weight)
        return self.predictor.predict_array(image_hu, spacing_mm).labels


def score_weights(predictor: Predictor, images: list[Path], labels_dir: Path, weights=WEIGHTS) -> list[dict]:
    """One row per case and weight: the case, the weight and the Dice of each KiTS region."""
    reused, rows = ReusedPasses(predictor), []
    for path in images:
        case = case_id_of(path)
        reused.cache.clear()
        image_hu, props = load_volume(path)
        reference, _ = load_label_map(labels_dir / f"{case}.nii.gz")
        for weight in weights:
            predicted = reused.labels(image_hu, props.spacing_mm, weight)
            rows.append({"case": case, "weight": weight, **{
                f"{region}_dice": dice(np.isin(predicted, values), np.isin(reference, values))
                for region, values in REGIONS.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of <case>_0000.nii.gz")
    parser.add_argument("--labels", type=Path, required=True, help="folder of <case>.nii.gz references")
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="model folders (one cascade each)")
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    parser.add_argument("--out", type=Path, default=Path("lesion_weights.json"))
    args = parser.parse_args()
    images = sorted(p for p in args.images.iterdir() if p.name.endswith(".nii.gz"))
    results = {}
    for model_dir in args.models:
        predictor = Predictor.from_model_dir(model_dir, device="cpu", postprocess=PostprocessConfig())
        rows = results[str(model_dir)] = score_weights(predictor, images, args.labels, args.weights)
        for case in dict.fromkeys(r["case"] for r in rows):
            print(model_dir.name, case, " ".join(f"w{r['weight']:g} {r['tumor_dice']:.3f}"
                                                  for r in rows if r["case"] == case), flush=True)
        for weight in args.weights:
            chosen = [r for r in rows if r["weight"] == weight]
            means = {region: np.mean([r[f"{region}_dice"] for r in chosen]) for region in REGIONS}
            print(f"{model_dir.name} w {weight:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
                  + f", lowest case kidney {min(r['kidney_dice'] for r in chosen):.3f}", flush=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
