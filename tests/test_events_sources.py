"""open_source for generators: names, options, and option errors."""

from __future__ import annotations

import numpy as np
import pytest

from streamflow.errors import ConfigError, SourceError
from streamflow.events import LHCO_NAMES, GaussianToy, SyntheticLHCO, open_source


def test_synthetic_by_name() -> None:
    source = open_source("synthetic", signal_fraction=0.2, seed=2, n_events=1_000, shapes={"wprime_mass": 3000})
    assert isinstance(source, SyntheticLHCO) and source.names == LHCO_NAMES and source.n_events == 1_000
    batch = next(source.chunks(1_000))
    assert abs(np.median(batch.column("mjj")[batch.labels == 1]) - 3000) < 100
    assert open_source("synthetic").signal_fraction == 0.01


def test_gaussian_by_name() -> None:
    source = open_source("gaussian", dim=4, signal_ratio=0.2, seed=1)
    assert isinstance(source, GaussianToy) and source.names == ("x0", "x1", "x2", "x3", "sample")
    assert source.n_events is None


@pytest.mark.parametrize(
    "spec, kwargs, error, message",
    [
        ("synthetic", {"loop": True}, ConfigError, "unknown option 'loop' for source 'synthetic'"),
        ("synthetic", {"shapes": {"wprime": 3000}}, ConfigError, "shapes: unknown key 'wprime'"),
        ("synthetic", {"signal_fraction": -1}, ConfigError, "signal_fraction must be in"),
        ("gaussian", {"signal_fraction": 0.1}, ConfigError, "takes signal_ratio"),
        ("gaussian", {"seed": -1}, ConfigError, "seed must be an integer >= 0"),
        ("gausian", {}, SourceError, "gausian: no such file"),
    ],
)
def test_bad_specs_and_options(spec: str, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        open_source(spec, **kwargs)
