"""Every docstring example in the package runs and gives what it shows."""
import doctest
import importlib
import pkgutil

import pytest

import kitsseg

MODULES = sorted(m.name for m in pkgutil.walk_packages(kitsseg.__path__, "kitsseg."))
WITH_EXAMPLES = {"kitsseg.io", "kitsseg.label_stats", "kitsseg.labels", "kitsseg.postprocessing",
                 "kitsseg.resampling", "kitsseg.inference.sliding_window", "kitsseg.inference.engine",
                 "kitsseg.deploy.bundle", "kitsseg.dicom_seg", "kitsseg.kidney_sides",
                 "kitsseg.planning", "kitsseg.boxes", "kitsseg.training.sampling", "kitsseg.training.trainer",
                 "kitsseg.preprocessing"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert (result.attempted > 0) == (name in WITH_EXAMPLES)  # examples are not lost (or added untested)
