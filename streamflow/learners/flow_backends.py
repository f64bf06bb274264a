"""Masked autoregressive flows from two libraries behind one small interface.

A backend builds a module with

    log_prob(z[n, k], context[n, c] | None) -> Tensor[n]   (log density of z)
    sample(n, context[n, c] | None) -> Tensor[n, k]         (one sample per context row)

from the flow options of a :class:`~streamflow.learners.flow.FlowConfig`:
``transform`` "affine" (MAF, Papamakarios et al. 2017) or "spline" (autoregressive
rational-quadratic splines, Durkan et al. 2019; identity tails outside
[-tail_bound, tail_bound]), ``transforms`` layers of MADE networks with ``blocks``
hidden layers of ``hidden`` units, the feature order reversed between layers.
nflows is the default; zuko gives the same family of flows.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

import zuko
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow
from nflows.transforms import autoregressive as ar
from nflows.transforms.base import CompositeTransform
from nflows.transforms.permutations import ReversePermutation
from torch import Tensor, nn


class FlowOptions(Protocol):
    @property
    def transform(self) -> str: ...
    @property
    def transforms(self) -> int: ...
    @property
    def hidden(self) -> int: ...
    @property
    def blocks(self) -> int: ...
    @property
    def bins(self) -> int: ...
    @property
    def tail_bound(self) -> float: ...


class Density(Protocol):
    def log_prob(self, z: Tensor, context: Tensor | None) -> Tensor: ...

    def sample(self, n: int, context: Tensor | None) -> Tensor: ...


class NflowsDensity(nn.Module):
    """nflows MAF with affine or rational-quadratic-spline autoregressive transforms."""

    def __init__(self, features: int, context: int, options: FlowOptions) -> None:
        super().__init__()
        common = dict(
            features=features,
            hidden_features=options.hidden,
            context_features=context or None,
            num_blocks=options.blocks,
        )
        layers: list[nn.Module] = []
        for i in range(options.transforms):
            if i:
                layers.append(ReversePermutation(features))
            if options.transform == "affine":
                layers.append(ar.MaskedAffineAutoregressiveTransform(**common))
            else:
                layers.append(
                    ar.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                        **common, num_bins=options.bins, tails="linear", tail_bound=options.tail_bound
                    )
                )
        self.flow = Flow(CompositeTransform(layers), StandardNormal([features]))

    def log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self.flow.log_prob(z, context)

    def sample(self, n: int, context: Tensor | None) -> Tensor:
        if context is None:
            return self.flow.sample(n)
        return self.flow.sample(1, context).squeeze(1)


class ZukoDensity(nn.Module):
    """zuko MAF with affine or monotonic rational-quadratic-spline transforms."""

    def __init__(self, features: int, context: int, options: FlowOptions) -> None:
        super().__init__()
        kwargs = dict(
            features=features,
            context=context,
            transforms=options.transforms,
            hidden_features=[options.hidden] * options.blocks,
        )
        if options.transform == "spline":
            spline = partial(zuko.transforms.MonotonicRQSTransform, bound=options.tail_bound)
            kwargs.update(univariate=spline, shapes=[(options.bins,), (options.bins,), (options.bins - 1,)])
        self.flow = zuko.flows.MAF(**kwargs)

    def log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self.flow(context).log_prob(z)

    def sample(self, n: int, context: Tensor | None) -> Tensor:
        if context is None:
            return self.flow().sample((n,))
        return self.flow(context).sample()


BACKENDS: dict[str, Callable[[int, int, FlowOptions], nn.Module]] = {
    "nflows": NflowsDensity,
    "zuko": ZukoDensity,
}


def build_density(backend: str, features: int, context: int, options: FlowOptions) -> nn.Module:
    """The flow of ``backend`` over ``features`` dimensions, conditional on ``context`` ones (0: none)."""
    return BACKENDS[backend](features, context, options)

