"""Reconstruction: particle events -> two leading anti-kT jets -> the 16 LHCO stream features.

Per event (massless particles from pT, eta, phi: px = pT cos phi, py = pT sin phi,
pz = pT sinh eta, E = pT cosh eta), with FastJet (the scikit-hep ``fastjet`` package):

1. anti-kT, R = 1.0, E-scheme: the inclusive jets, ordered by pT; j1, j2 the two leading.
   Their four-momenta are sums of their constituents; m_j = sqrt(max(E^2 - |p|^2, 0)).
2. N-subjettiness of each jet (Thaler, Van Tilburg, arXiv:1011.2268), N = 1, 2, 3:

       tau_N = sum_k pT_k min_a dR_{k,a}^beta / sum_k pT_k R0^beta

   over the jet's constituents k, with the N axes a the exclusive-kT subjets (the
   constituents reclustered with kT, R = 1.0, E-scheme, stopped at N jets), beta = 1,
   R0 = 1.0 ("normalised": the official file is not, every ratio is the same).
   dR^2 = (eta_k - eta_a)^2 + (phi_k - phi_a)^2 with *pseudo*rapidity eta and phi in
   [-pi, pi] **without** periodic wrapping of the phi difference. These are the settings
   that reproduce ``lhco_rnd_first60k.features.h5`` (all 6,000 tau values of the first
   1,000 events to 1e-13 relative): FastJet contrib's Nsubjettiness (rapidity, wrapped
   phi) matches only ~12% of them within 1e-3, and with the phi wrap 17% of the jets
   (those straddling phi = +-pi) differ by up to a factor 100. ``periodic_phi=True``
   gives the physical distance instead (a different stream schema in effect: models
   trained on the official features would see other values for those jets). kT axes
   with R = 1.0 rather than FastJet's max_allowable_R (Nsubjettiness' KT_Axes) matter
   for 0.1% of the jets, where a soft constituent merges with the beam first.
3. :func:`streamflow.events.derived.lhco_features` turns the 14 jet columns (the
   features file's order) into the 16 stream features the learners use.

Two interfaces give identical results: ``vectorised`` (default) hands FastJet a whole
frame of events per call (awkward arrays, the loop in C++); the per-event one loops in
Python over FastJet's classic PseudoJet interface (bench.reco measures both).

Events that cannot give the features are rejected, each for one reason, in the order
of :data:`REJECT_REASONS` (the first that applies): no particles, more particles than
``max_particles`` (700 in the LHCO files), a non-finite pT/eta/phi or momentum, a
particle with pT <= 0 (padding is dropped before), fewer than two jets. The rest of
the frame is reconstructed as usual.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch
from streamflow.events.derived import lhco_features
from streamflow.events.particles import PARTICLES_PER_ROW, ParticleBatch
from streamflow.events.schema import LHCO_FILE_COLUMNS, LHCO_NAMES

N_AXES = (1, 2, 3)
REJECT_REASONS = ("no particles", "too many particles", "non-finite values", "pT <= 0", "fewer than two jets")


@dataclass(frozen=True)
class RecoConfig:
    """Jet and substructure settings; the defaults reproduce the LHCO R&D features file.

    jet_radius: anti-kT R of the jets; axes_radius: kT R of the reclustering that finds
    the exclusive subjet axes; beta, r0: the N-subjettiness measure; periodic_phi: wrap
    the phi difference into [-pi, pi] (False reproduces the official features, see the
    module docstring); max_particles: events with more are rejected; vectorised: many
    events per FastJet call (False: a Python loop over events).
    """

    jet_radius: float = 1.0
    axes_radius: float = 1.0
    beta: float = 1.0
    r0: float = 1.0
    periodic_phi: bool = False
    max_particles: int = PARTICLES_PER_ROW
    vectorised: bool = True

    def __post_init__(self) -> None:
        for name in ("jet_radius", "axes_radius", "beta", "r0"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < 100):
                raise ConfigError(f"reco {name} must be a positive number below 100, got {value!r}")
        if self.max_particles < 2:
            raise ConfigError(f"reco max_particles must be at least 2, got {self.max_particles}")


@dataclass(frozen=True)
class RecoResult:
    """What one frame gave: the reconstructed events and, per reason, the rejected ids.

    events: the accepted events' 16 stream features (LHCO_NAMES), ids and labels, in input order.
    jets: float64[m, 14] of the accepted events in LHCO_FILE_COLUMNS order.
    rejected: reason -> uint64 ids (only reasons that occurred).
    """

    events: EventBatch
    jets: np.ndarray
    rejected: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        return sum(len(ids) for ids in self.rejected.values())


@dataclass(frozen=True)
class _Particles:
    """Flat per-particle kinematics of a frame (float64), in the frame's particle order."""

    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray  # phi_std = atan2(py, px), in [-pi, pi]


@dataclass(frozen=True)
class _LeadingJets:
    """The two leading jets of each of m events: four-momenta and constituent particle indices.

    p4: float64[m, 2, 4] (px, py, pz, E), j1 then j2; jet_counts: int64[2m] constituents of
    jet 2i + j; constituents: int64[sum] indices into the frame's particles, jet by jet.
    has_two: bool[m'] over the events handed in (p4 etc. only for those that have two jets).
    """

    has_two: np.ndarray
    p4: np.ndarray
    jet_counts: np.ndarray
    constituents: np.ndarray


def _kinematics(batch: ParticleBatch) -> _Particles:
    with np.errstate(all="ignore"):  # non-finite inputs are rejected by the caller
        px, py = batch.pt * np.cos(batch.phi), batch.pt * np.sin(batch.phi)
        pz, e = batch.pt * np.sinh(batch.eta), batch.pt * np.cosh(batch.eta)
        return _Particles(px, py, pz, e, batch.pt, batch.eta, np.arctan2(py, px))


def _reject_reasons(batch: ParticleBatch, particles: _Particles, max_particles: int) -> np.ndarray:
    """int8[n]: index into REJECT_REASONS of each event's first failing check, -1 if none (jets aside)."""
    n = len(batch)
    event_of = np.repeat(np.arange(n), batch.counts)
    finite = np.ones(len(batch.pt), dtype=bool)
    for values in (batch.pt, batch.eta, batch.phi, particles.pz, particles.e):
        finite &= np.isfinite(values)
    bad_finite = np.bincount(event_of, ~finite, minlength=n) > 0
    bad_pt = np.bincount(event_of, finite & ~(batch.pt > 0), minlength=n) > 0
    reason = np.full(n, -1, dtype=np.int8)
    for index, failed in reversed(list(enumerate(
            (batch.counts == 0, batch.counts > max_particles, bad_finite, bad_pt)))):
        reason[failed] = index
    return reason


def _awkward_events(particles: _Particles, index: np.ndarray, counts: np.ndarray) -> Any:
    import awkward as ak

    record = ak.zip({"px": particles.px[index], "py": particles.py[index], "pz": particles.pz[index],
                     "E": particles.e[index]}, with_name="Momentum4D")
    return ak.unflatten(record, counts)


def _leading_vectorised(particles: _Particles, batch: ParticleBatch, config: RecoConfig) -> _LeadingJets:
    import awkward as ak
    import fastjet

    offsets = batch.offsets
    events = _awkward_events(particles, np.arange(len(batch.pt)), batch.counts.astype(np.int64))
    sequence = fastjet.ClusterSequence(events, fastjet.JetDefinition(fastjet.antikt_algorithm, config.jet_radius))
    jets = sequence.inclusive_jets()
    has_two = np.asarray(ak.num(jets)) >= 2
    jets, index = jets[has_two], sequence.constituent_index(0.0)[has_two]
    order = ak.argsort(np.hypot(jets.px, jets.py), axis=1, ascending=False)[:, :2]
    lead = jets[order]
    p4 = np.stack([np.asarray(getattr(lead, c)) for c in ("px", "py", "pz", "E")], axis=-1)  # [m, 2, 4]
    local = ak.flatten(index[order], axis=1)  # [2m][k]: indices within the event
    jet_counts = np.asarray(ak.num(local), dtype=np.int64)
    event_start = np.repeat(offsets[:-1][has_two], 2)
    constituents = np.asarray(ak.flatten(local), dtype=np.int64) + np.repeat(event_start, jet_counts)
    return _LeadingJets(has_two, p4.reshape(-1, 2, 4), jet_counts, constituents)


def _leading_per_event(particles: _Particles, batch: ParticleBatch, config: RecoConfig) -> _LeadingJets:
    import fastjet

    definition = fastjet.JetDefinition(fastjet.antikt_algorithm, config.jet_radius)
    offsets = batch.offsets
    has_two = np.zeros(len(batch), dtype=bool)
    p4: list[list[float]] = []
    jet_counts: list[int] = []
    constituents: list[int] = []
    for i in range(len(batch)):
        inputs = []
        for k in range(offsets[i], offsets[i + 1]):
            pseudojet = fastjet.PseudoJet(particles.px[k], particles.py[k], particles.pz[k], particles.e[k])
            pseudojet.set_user_index(int(k))
            inputs.append(pseudojet)
        sequence = fastjet.ClusterSequence(inputs, definition)  # kept alive: the jets refer to it
        jets = fastjet.sorted_by_pt(sequence.inclusive_jets())
        if len(jets) < 2:
            continue
        has_two[i] = True
        for jet in jets[:2]:
            p4.append([jet.px(), jet.py(), jet.pz(), jet.E()])
            members = [c.user_index() for c in jet.constituents()]
            jet_counts.append(len(members))
            constituents.extend(members)
    return _LeadingJets(has_two, np.array(p4, dtype=np.float64).reshape(-1, 2, 4),
                        np.array(jet_counts, dtype=np.int64), np.array(constituents, dtype=np.int64))


def _axes_vectorised(particles: _Particles, jets: _LeadingJets, config: RecoConfig) -> list[np.ndarray]:
    """Per N: float64[2m, N, 2] (eta, phi) of each jet's exclusive-kT axes; NaN where a jet has < N."""
    import awkward as ak
    import fastjet

    members = _awkward_events(particles, jets.constituents, jets.jet_counts)
    sequence = fastjet.ClusterSequence(members, fastjet.JetDefinition(fastjet.kt_algorithm, config.axes_radius))
    out = []
    with warnings.catch_warnings():  # fastjet warns that exclusive jets need kT-like algorithms: this is kT
        warnings.filterwarnings("ignore", message="dcut and exclusive jets")
        for n in N_AXES:
            axes = sequence.exclusive_jets_up_to(n)
            found = np.asarray(ak.num(axes), dtype=np.int64)
            x, y, z = (np.asarray(ak.flatten(getattr(axes, c))) for c in ("px", "py", "pz"))
            slot = np.arange(len(x)) - np.repeat(np.cumsum(found) - found, found)
            padded = np.full((len(found), n, 2), np.nan)
            jet = np.repeat(np.arange(len(found)), found)
            with np.errstate(all="ignore"):
                padded[jet, slot, 0] = np.arcsinh(z / np.hypot(x, y))
            padded[jet, slot, 1] = np.arctan2(y, x)
            out.append(padded)
    return out


def _axes_per_event(particles: _Particles, jets: _LeadingJets, config: RecoConfig) -> list[np.ndarray]:
    import fastjet

    definition = fastjet.JetDefinition(fastjet.kt_algorithm, config.axes_radius)
    starts = np.concatenate([[0], np.cumsum(jets.jet_counts)])
    out = [np.full((len(jets.jet_counts), n, 2), np.nan) for n in N_AXES]
    for j in range(len(jets.jet_counts)):
        members = [fastjet.PseudoJet(particles.px[k], particles.py[k], particles.pz[k], particles.e[k])
                   for k in jets.constituents[starts[j]:starts[j + 1]]]
        sequence = fastjet.ClusterSequence(members, definition)
        for padded, n in zip(out, N_AXES, strict=True):
            for slot, axis in enumerate(sequence.exclusive_jets_up_to(n)):
                padded[j, slot] = (axis.eta(), axis.phi_std())
    return out


def _taus(particles: _Particles, jets: _LeadingJets, axes: list[np.ndarray], config: RecoConfig) -> np.ndarray:
    """float64[2m, 3]: tau_1..3 of every jet (module docstring); 0 when a jet has fewer constituents than N."""
    n_jets = len(jets.jet_counts)
    jet_of = np.repeat(np.arange(n_jets), jets.jet_counts)
    pt, eta, phi = (getattr(particles, c)[jets.constituents] for c in ("pt", "eta", "phi"))
    norm = np.bincount(jet_of, pt, minlength=n_jets) * config.r0**config.beta
    taus = np.empty((n_jets, len(N_AXES)))
    for column, padded in enumerate(axes):
        d_eta = eta[:, None] - padded[jet_of, :, 0]
        d_phi = phi[:, None] - padded[jet_of, :, 1]
        if config.periodic_phi:
            d_phi = (d_phi + np.pi) % (2 * np.pi) - np.pi
        distance = np.sqrt(d_eta * d_eta + d_phi * d_phi)
        nearest = np.fmin.reduce(distance, axis=1)  # NaN axes (fewer subjets than N) never win
        taus[:, column] = np.bincount(jet_of, pt * nearest**config.beta, minlength=n_jets) / norm
    return taus


def reconstruct(batch: ParticleBatch, config: RecoConfig | None = None) -> RecoResult:
    """The stream features of every event of ``batch`` that has two jets; the rest rejected with a reason."""
    config = config or RecoConfig()
    ids = batch.ids
    particles = _kinematics(batch)
    reason = _reject_reasons(batch, particles, config.max_particles)
    candidates = np.flatnonzero(reason < 0)
    if len(candidates) < len(batch):
        batch = batch.take(candidates)
        particles = _kinematics(batch)
    if len(batch):
        leading, find_axes = ((_leading_vectorised, _axes_vectorised) if config.vectorised
                              else (_leading_per_event, _axes_per_event))
        jets = leading(particles, batch, config)
        axes = find_axes(particles, jets, config)
        taus = _taus(particles, jets, axes, config).reshape(-1, 2, 3)
    else:
        jets = _LeadingJets(np.zeros(0, bool), np.zeros((0, 2, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64))
        taus = np.zeros((0, 2, 3))
    reason[candidates[~jets.has_two]] = REJECT_REASONS.index("fewer than two jets")
    p4 = jets.p4
    mass = np.sqrt(np.clip(p4[:, :, 3] ** 2 - np.einsum("ijk,ijk->ij", p4[:, :, :3], p4[:, :, :3]), 0.0, None))
    columns = np.concatenate([p4[:, :, :3], mass[:, :, None], taus], axis=2).reshape(-1, len(LHCO_FILE_COLUMNS))
    labels = None if batch.labels is None else np.ascontiguousarray(batch.labels[jets.has_two])
    events = EventBatch(ids=np.ascontiguousarray(batch.ids[jets.has_two]), features=lhco_features(columns),
                        names=LHCO_NAMES, labels=labels)
    rejected = {name: ids[reason == i] for i, name in enumerate(REJECT_REASONS) if (reason == i).any()}
    return RecoResult(events=events, jets=columns, rejected=rejected)
