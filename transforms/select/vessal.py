"""VeSSAL: per-frame streaming selection at a target labelling rate (pure numpy; no Beam).

:class:`VeSSAL` decides, for each frame as it arrives, whether to send it for labelling, with
probability ``p = min(1, zeta * u^T A^-1 u)``:

* ``u`` (float64 ``(d,)``, ``d <= 256``) is the frame's *uncertainty-scaled embedding*
  (:class:`Embedder`): its unit-normalised embedding, projected to ``d`` dimensions by a fixed
  seeded Gaussian random projection when it is wider, times the frame's uncertainty
  (:func:`frame_uncertainty`, chosen by the parameter ``uncertainty``):

  - ``badge``: ``||p - e_yhat||``, the norm of the softmax error of the predicted class. That
    factor is the norm of BADGE's last-layer gradient embedding ``(p - e_yhat) (x) h`` divided by
    ``||h||`` (Ash et al. 2020), so ``u`` has the gradient embedding's uncertainty with the
    embedding's direction, in ``d`` instead of ``C * D`` dimensions.
  - ``detection_max`` or ``detection_mean`` (:data:`DETECTION_UNCERTAINTIES`): the detector's
    per-frame score, the max or mean over the frame's boxes of ``1 - |2c - 1|`` (``c`` the box's
    confidence; Brust et al. 2019), in ``[0, 1]``; the best box the detector rejected counts too
    (:data:`transforms.score.detection.UNCERTAINTY_FLOOR`), and a frame in which it sees nothing
    has 0. When the job
    labels boxes, the classifier's ``p`` (ImageNet classes of the backbone with the default
    models) says nothing of what the detector is unsure about; the detector's own uncertainty
    does. A frame without that score (one the detector cannot take) has uncertainty 0: ``u = 0``,
    probability 0, never picked.
* ``A^-1`` is the inverse of ``A = lambda I + sum of u u^T over the frames picked so far``
  (``lambda = 1 / cov_inv_scaling``): ``u^T A^-1 u`` is the frame's determinantal contribution, large
  for directions the picks have not covered. A pick updates ``A^-1`` by Sherman-Morrison (the
  rank-1 Woodbury identity): ``A^-1 <- A^-1 - (A^-1 u)(A^-1 u)^T / (1 + u^T A^-1 u)``, so a
  near-identical following frame gets a much lower probability.
* ``zeta = ideal_rate / tr(Sigma A^-1)``, with ``Sigma`` the running second moment of the
  stream's ``u`` (``E[u u^T]``): then ``E[p] = zeta E[u^T A^-1 u] = ideal_rate``. The trace
  follows ``Sigma``'s update in ``O(1)``: ``tr(Sigma' A^-1) = (1 - beta) tr(Sigma A^-1) + beta
  u^T A^-1 u``; when a pick changes ``A^-1`` it is recomputed exactly as the Frobenius inner
  product of two symmetric matrices, ``O(d^2)``, not the ``O(d^3)`` of a matrix product.
* ``ideal_rate`` steers the realised rate to ``label_rate``: ``(R (t + H) - picks) / H``, clipped to
  ``[0, 1]``: the rate that would meet the target ``horizon`` (``H``) frames from now. With
  ``payback="at_once"`` (the default) picks ahead of the target are paid back at once: while
  ``picks >= R (t + 1)`` the ideal rate is 0 (a camera's forced first pick, or a burst at a scene
  change, is followed by no pick until the frames seen have earned it), and a deficit is made up
  over ``min(H, max(10, t + 1))`` frames, ``H = 2 / R`` by default (a young state catches up
  sooner): the state spends labels it has saved, never labels of frames it has not seen. A
  deficit comes from frames that cannot be picked (``u = 0``: no detection) and from the draws;
  over ``10 / R`` frames it was made up too slowly for a camera of a few hundred frames
  (``vtest.avi`` in two clips, 400 frames, ``R = 0.05``: 17 picks, 19 with ``2 / R``). With
  ``payback="horizon"`` (``H = max(100, 10 / R)``) an excess, like a deficit, is spread over
  ``H``, so a short camera ends above the rate (1.28-1.58x ``R`` on synthetic cameras of 40-300
  frames at ``R = 0.04``, against 0.95-0.98x at once; 1.01 and 1.00x at 5,000 frames). In a
  stream of known length ``N`` (a batch pass) it is the reference's ``(R N - picks) / (N - t)``: the
  rate that meets the target at the end, so a short camera's burst of picks (a new scene, a
  forced first pick) is paid back within the camera, not over ``H`` frames it does not have.
* **A new camera's first frame** (``new_camera_pick``, on by default): the first frame with
  ``u != 0`` of a camera the state has neither picked from nor seen labelled is picked with
  probability 1, whatever the rate (the hour's cap still applies). A camera without a labelled
  frame is a blind spot of the model; the determinantal term only rises a few-fold for it (a new
  site's frames share most of their embedding directions with the others), so at ``R = 0.04``
  its frames get ``p`` 0.2-0.3 and the first pick waits several frames. The reference code
  picks the first frame of its stream for the same reason (``Sigma = 0`` gives ``zeta = inf``);
  here each camera starts that way, and the rate controller takes the extra pick back from the
  frames that follow. The state keeps the names of the cameras covered (one string per camera).

State: ``A^-1`` and ``Sigma`` (``2 d^2`` float64, 1 MB at ``d = 256``), counts, the current
hour's picks, the last 256 picks (frame ids, pixel hashes and decisions), the names of the cameras
covered and the frame indices decided of the last 1,024 sources (a bit mask per file, 1 MB at most); work per frame ``O(d^2)`` (one matrix-vector
product and one rank-1 update of ``Sigma``, in place on float64 C-contiguous arrays; a pick adds
one rank-1 update of ``A^-1`` and the trace).

Where this differs from the reference code (``asaran/VeSSAL``, ``query_strategies/vessal.py``,
``StreamingSampling.streaming_sampler``, commit f506fe6):

* The reference knows the stream's length ``N`` and a budget ``k`` (``ideal_rate = (k - picks) /
  (N - i)``); a camera stream has no end, so the rate is a target ``R`` with a finite horizon.
  A batch pass knows ``N`` and uses the reference's form with ``k = R N``.
* The reference's ``Sigma`` is the plain mean of all ``u u^T`` seen; here it is that mean for the
  first ``memory`` frames, then an exponential moving average of that memory, so that the rate
  adapts when the stream changes (day and night, a new camera).
* The reference computes ``tr(Sigma A^-1)`` with a matrix product (``O(d^3)``) per frame; here
  ``O(1)`` per frame and ``O(d^2)`` per pick (above).
* The reference uses BADGE gradient embeddings (``C * D`` wide, or a rank-``r`` expectation) on GPU;
  here the uncertainty-scaled projected embedding above, which the streaming job has without
  back-propagation; its scale is BADGE's ``||p - e_yhat||`` (``uncertainty="badge"``) or, for a
  detection job, a detector's per-frame uncertainty (the reference has classifiers only). The
  reference's random projection is scikit-learn's ``GaussianRandomProjection`` (used here too).
* Draws are deterministic per frame (a hash of the frame id and ``seed``): a frame replayed after a
  restart gets the same decision from the same state.
* The reference's first frame is picked because ``zeta`` is infinite; here ``Sigma`` includes the
  frame being decided (its first frame gets ``p = ideal_rate``) and the first frame of each camera
  is picked explicitly (``new_camera_pick``, above).
* Added for a production stream: ``max_per_hour`` (picks per event-time hour; a burst beyond it is
  not picked) and refusal of frames already picked, of identical pixels, or listed as labelled.
  A frame the state has already decided (``frame=(source, index)`` of :meth:`VeSSAL.decide`, the
  frames of the last 1,024 sources, :class:`DecidedFrames`) is not decided again: a restarted
  stream reads the files it had not finished once more, and their frames must not count twice
  in ``seen`` and ``Sigma``, nor get a second draw.

References
----------
* Saran, A., Yousefi, S., Krishnamurthy, A., Langford, J. & Ash, J. T. (2023). Streaming Active
  Learning with Deep Neural Networks. ICML. (Algorithm 1, VeSSAL.) Reference code:
  https://github.com/asaran/VeSSAL ``query_strategies/vessal.py``.
* Ash, J. T., Zhang, C., Krishnamurthy, A., Langford, J. & Agarwal, A. (2020). Deep Batch Active
  Learning by Diverse, Uncertain Gradient Lower Bounds (BADGE). ICLR. (Gradient embeddings.)
* Brust, C.-A., Käding, C. & Denzler, J. (2019). Active Learning for Deep Object Detection. VISAPP.
  (Per-box margin ``1 - |2c - 1|``, aggregated by max or mean over a frame's boxes.)
* Sherman, J. & Morrison, W. J. (1950). Adjustment of an inverse matrix corresponding to a change
  in one element of a given matrix. Ann. Math. Statist. 21.
* Johnson, W. B. & Lindenstrauss, J. (1984); Achlioptas, D. (2003): random projections.
"""
import collections
import hashlib
import json
import math
from typing import Iterable, Mapping, NamedTuple, Optional

import numpy as np

#: The strategy's name (``--strategy vessal``): per frame, as frames arrive (streaming) or in event-time order (batch).
VESSAL = "vessal"
#: Largest width of ``u``: state is ``2 d^2`` floats and each frame costs ``O(d^2)``.
MAX_DIM = 256
#: The reference code's ``cov_inv_scaling`` default (``A^-1`` starts as ``100 I``).
COV_INV_SCALING = 100.0
#: Seconds in the window of ``max_per_hour``.
HOUR_S = 3600.0
#: Keys (frame id and pixel hash: two per pick) of the recent picks a state remembers, to refuse
#: picking them again (a frame delivered twice, identical pixels): the last 256 picks. The state
#: is read and written for every frame, so this list is kept short.
RECENT_PICKS = 512
#: Sources (files) whose decided frame indices a state keeps (:class:`DecidedFrames`): the files a
#: restarted stream may read again are the ones it had not finished, a few per camera.
DECIDED_SOURCES = 1024
#: Bits of frame masks a state keeps at most (:class:`DecidedFrames`): 1 MB.
DECIDED_BITS = 1 << 23

#: ``uncertainty="badge"``: ``||p - e_yhat||`` of the class probabilities (:func:`badge_scale`).
BADGE = "badge"
#: The per-frame detection scores VeSSAL's ``uncertainty`` may be: in the registry
#: (:mod:`schemas.scores`) with needs ``detections``, high = uncertain, and in ``[0, 1]``
#: (max and mean of the per-box ``1 - |2c - 1|``). Not ``detection_sum``,
#: ``detection_count``, ``detection_uncertain_count`` (they grow with the number of boxes, not in
#: ``[0, 1]``), ``detection_localisation`` (only computed with flip-TTA) nor
#: ``detection_rare_class`` (class rarity over the whole run, not an uncertainty, and computed
#: once every frame is scored: not per frame as it arrives).
DETECTION_UNCERTAINTIES = ("detection_max", "detection_mean")
#: Every value of VeSSAL's ``uncertainty``.
UNCERTAINTIES = (BADGE,) + DETECTION_UNCERTAINTIES

PICKED, SKIPPED, CAPPED, ALREADY_PICKED, LABELLED = "picked", "skipped", "capped", "already_picked", "labelled"
#: With ``payback="at_once"``, the shortest horizon over which a young state makes up a deficit.
MIN_HORIZON = 10
#: ``payback``: picks ahead of the rate paid back at once, or spread over ``horizon`` frames.
AT_ONCE, HORIZON = "at_once", "horizon"
PAYBACKS = (AT_ONCE, HORIZON)
#: A frame the state had decided already (read again after a restart): nothing changes.
DECIDED_BEFORE = "decided_before"


def badge_scale(probabilities: np.ndarray) -> float:
    """``||p - e_yhat||_2`` of class probabilities ``p`` (float ``(C,)``): the norm of BADGE's
    last-layer gradient embedding divided by the embedding's norm (Ash et al. 2020), in
    ``[0, sqrt(2)]``; 0 for a one-hot ``p``."""
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if p.size == 0:
        return 0.0
    # ||p - e_k||^2 = ||p||^2 - 2 p_k + 1, k = argmax: one inner product, no copy
    return math.sqrt(max(0.0, float(p @ p) - 2.0 * float(p.max()) + 1.0))


def check_uncertainty(uncertainty: str) -> str:
    """``uncertainty`` if it is one of :data:`UNCERTAINTIES`; else raises a one-line ``ValueError``
    naming the allowed values."""
    if uncertainty not in UNCERTAINTIES:
        raise ValueError(f"uncertainty must be one of {', '.join(UNCERTAINTIES)}, got {uncertainty!r}")
    return uncertainty


def frame_uncertainty(probabilities, scores: Mapping[str, float], uncertainty: str) -> Optional[float]:
    """A frame's uncertainty, the factor of its VeSSAL ``u``: for ``uncertainty="badge"``
    :func:`badge_scale` of ``probabilities`` (float ``(C,)``), in ``[0, sqrt(2)]``; for a detection
    score (:data:`DETECTION_UNCERTAINTIES`) ``scores[uncertainty]`` (the frame's per-frame scores,
    name to value), in ``[0, 1]``, or None when the frame has no such score (the detector did not
    score it; the Beam transforms use 0 and count it).

    Raises
    ------
    ValueError
        An unknown ``uncertainty``, or a detection score that is not a number in ``[0, 1]``.
    """
    if check_uncertainty(uncertainty) == BADGE:
        return badge_scale(probabilities)
    value = scores.get(uncertainty)
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"its {uncertainty} is {value!r}, not in [0, 1]")
    return value


class Embedder:
    """Frame embedding ``h`` (``(D,)``) and probabilities ``p`` (``(C,)``) or a given uncertainty
    ``scale`` to VeSSAL's ``u`` (float64 ``(d,)``): ``P (h / ||h||) * ||p - e_yhat||``, or
    ``P (h / ||h||) * scale``, with ``P`` scikit-learn's
    ``GaussianRandomProjection(n_components=d, random_state=seed)`` (entries N(0, 1/d)) when
    ``D > dim``, else the identity (``d = D``). Same ``(D, dim, seed)``: same ``P`` on every worker
    and after every restart.

    Raises
    ------
    ValueError
        ``dim`` outside ``[1, 256]``; at a call, an embedding of another width than the first one,
        neither ``probabilities`` nor ``scale``, or a ``scale`` negative or not finite.
    """

    def __init__(self, dim: int = 64, seed: int = 0):
        if not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
            raise ValueError(f"dim must be an integer in [1, {MAX_DIM}], got {dim!r}")
        self.dim, self.seed = dim, int(seed)
        self._width: Optional[int] = None
        self._projection: Optional[np.ndarray] = None  # (d, D) or None: identity

    def _fit(self, width: int):
        self._width = width
        if width > self.dim:
            from sklearn.random_projection import GaussianRandomProjection
            projection = GaussianRandomProjection(n_components=self.dim, random_state=self.seed)
            projection.fit(np.zeros((1, width)))
            self._projection = np.asarray(projection.components_, dtype=np.float64)

    @property
    def out_dim(self) -> Optional[int]:
        """``d`` once the first embedding was seen, else None."""
        if self._width is None:
            return None
        return self.dim if self._projection is not None else self._width

    def __call__(self, embedding: np.ndarray, probabilities: Optional[np.ndarray] = None, *,
                 scale: Optional[float] = None) -> np.ndarray:
        """``u`` of one frame: the projected unit embedding times ``scale`` when given (a float
        ``>= 0``, e.g. :func:`frame_uncertainty`), else times :func:`badge_scale` of
        ``probabilities``."""
        if scale is None:
            if probabilities is None:
                raise ValueError("give the frame's class probabilities or its uncertainty (scale)")
        elif not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        h = np.asarray(embedding, dtype=np.float64).ravel()
        if self._width is None:
            self._fit(h.size)
        elif h.size != self._width:
            raise ValueError(f"embedding width {h.size} differs from the stream's {self._width}")
        norm = float(np.sqrt(h @ h))
        if norm > 0:
            h = h / norm
        if self._projection is not None:
            h = self._projection @ h
        return h * (badge_scale(probabilities) if scale is None else float(scale))


def frame_draw(frame_id: str, seed: int = 0) -> float:
    """A uniform draw in ``[0, 1)`` fixed by ``frame_id`` and ``seed`` (first 53 bits of a sha256)."""
    digest = hashlib.sha256(f"{seed}:{frame_id}".encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


class DecidedFrames:
    """The frame indices a state has decided, per source file, exactly (any order, any sampling of
    a video's frames), for the sources decided last: at most ``max_sources`` sources and
    ``max_bits`` bits in all (the least recently decided source is dropped first).

    A source is named by a 64-bit BLAKE2b hash of its URI and holds ``(lowest index, mask)``: bit
    ``i`` of the mask is frame ``lowest + i`` (a file of N frames sampled at any rate costs N / 8
    bytes). The dict pickles in about 50 us at 1,024 sources (it is written with the Beam state);
    a frame costs one dict lookup and a shift. Copy on write: after :meth:`detach` the dict handed
    out (:meth:`to_state`) stays as it is; the next :meth:`add` copies it (its entries are
    immutable tuples) once."""

    def __init__(self, state: Optional[Mapping] = None, max_sources: int = DECIDED_SOURCES,
                 max_bits: int = DECIDED_BITS):
        self.max_sources, self.max_bits = max_sources, max_bits
        self._frames = dict(state or {})  # source hash -> (lowest index, mask), least recent first
        self._bits = sum(mask.bit_length() for _, mask in self._frames.values())
        self._shared = state is not None

    @staticmethod
    def source_hash(source: str) -> int:
        return int.from_bytes(hashlib.blake2b(source.encode("utf-8"), digest_size=8).digest(), "little")

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, frame) -> bool:
        source, index = frame
        entry = self._frames.get(self.source_hash(source))
        if entry is None:
            return False
        offset = int(index) - entry[0]
        return offset >= 0 and (entry[1] >> offset) & 1 == 1

    def indices(self, source: str) -> list:
        """The decided frame indices of ``source``, ascending (empty when not kept)."""
        lowest, mask = self._frames.get(self.source_hash(source), (0, 0))
        return [lowest + i for i, bit in enumerate(reversed(bin(mask)[2:])) if bit == "1"]

    def detach(self):
        self._shared = True

    def add(self, source: str, index: int):
        """Marks frame ``index`` of ``source`` as decided (and ``source`` as the latest)."""
        if self._shared:
            self._frames, self._shared = dict(self._frames), False
        index, key = int(index), self.source_hash(source)
        entry = self._frames.pop(key, None)  # re-inserted last: the most recent
        if entry is None:
            lowest, mask = index, 1
        elif index < entry[0]:
            lowest, mask = index, (entry[1] << (entry[0] - index)) | 1
        else:
            lowest, mask = entry[0], entry[1] | (1 << (index - entry[0]))
        self._bits += mask.bit_length() - (entry[1].bit_length() if entry else 0)
        self._frames[key] = (lowest, mask)
        while len(self._frames) > 1 and (len(self._frames) > self.max_sources or self._bits > self.max_bits):
            oldest = next(iter(self._frames))
            self._bits -= self._frames.pop(oldest)[1].bit_length()

    def to_state(self) -> dict:
        """The dict this instance updates (:meth:`detach` keeps it as it is)."""
        return self._frames


class Decision(NamedTuple):
    """One frame's outcome: ``outcome`` (``picked``, ``skipped``, ``capped``: the hour's
    ``max_per_hour`` was reached, ``already_picked``, ``labelled``, ``decided_before``: the
    state had decided this frame of this source already, and nothing changed), ``probability`` in [0, 1]
    (the selection probability ``min(1, zeta q)``; 0 when refused before drawing), ``q`` =
    ``u^T A^-1 u``, ``zeta``, ``ideal_rate``, ``seen``/``picks`` after the frame, and ``new_camera``:
    the probability is 1 because the frame is its camera's first (``new_camera_pick``)."""
    outcome: str
    probability: float
    q: float
    zeta: float
    ideal_rate: float
    seen: int
    picks: int
    new_camera: bool = False

    @property
    def picked(self) -> bool:
        return self.outcome == PICKED


class VeSSAL:
    """Streaming active-learning sampler at a target rate (see the module docstring).

    Parameters
    ----------
    label_rate : float
        Target share of frames picked, in ``(0, 1]``.
    dim : int
        Width ``d`` of ``u`` (``<= 256``); fixed by the first frame.
    max_per_hour : int
        Picks per event-time hour (``floor(t / 3600)``); 0: no cap.
    horizon : int, optional
        Frames over which a deficit of picks is made up (an excess too, with ``payback="horizon"``);
        default ``max(10, 2 / R)`` with ``payback="at_once"``, ``max(100, 10 / R)`` with
        ``horizon``.
    memory : int
        Frames the running second moment ``Sigma`` averages over (a plain mean before, an
        exponential moving average after).
    cov_inv_scaling : float
        ``A^-1`` starts as ``cov_inv_scaling * I`` (the reference's parameter and default).
    seed : int
        Seed of the per-frame draws (:func:`frame_draw`).
    uncertainty : str
        What scales ``u`` (:data:`UNCERTAINTIES`, :func:`frame_uncertainty`): ``badge``
        (``||p - e_yhat||``) or a detection score (``detection_max``, ``detection_mean``). The
        sampler only records it (:meth:`describe`); whoever builds ``u`` applies it.
    new_camera_pick : bool
        Pick the first frame with ``u != 0`` of each camera not yet covered (see the module
        docstring); cameras are named by the ``camera`` argument of :meth:`decide`.
    payback : str
        ``at_once`` (no pick while the state is ahead of ``R`` times the frames seen) or
        ``horizon`` (an excess spread over ``horizon`` frames); see the module docstring. A
        stream of known length (``remaining``) uses the reference's rate either way.

    Raises
    ------
    ValueError
        For a parameter out of range, naming it.
    """

    def __init__(self, label_rate: float, dim: int = 64, *, max_per_hour: int = 0,
                 horizon: Optional[int] = None, memory: int = 10_000,
                 cov_inv_scaling: float = COV_INV_SCALING, seed: int = 0, uncertainty: str = BADGE,
                 new_camera_pick: bool = True, payback: str = AT_ONCE):
        if not 0 < label_rate <= 1:
            raise ValueError(f"label_rate must be in (0, 1], got {label_rate!r}")
        if not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
            raise ValueError(f"dim must be an integer in [1, {MAX_DIM}], got {dim!r}")
        if not isinstance(max_per_hour, int) or max_per_hour < 0:
            raise ValueError(f"max_per_hour must be an integer >= 0 (0: no cap), got {max_per_hour!r}")
        if payback not in PAYBACKS:
            raise ValueError(f"payback must be one of {', '.join(PAYBACKS)}, got {payback!r}")
        if horizon is None:
            horizon = max(MIN_HORIZON, int(round(2 / label_rate))) if payback == AT_ONCE else max(
                100, int(round(10 / label_rate)))
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        if not isinstance(memory, int) or memory < 1:
            raise ValueError(f"memory must be an integer >= 1, got {memory!r}")
        if not cov_inv_scaling > 0:
            raise ValueError(f"cov_inv_scaling must be > 0, got {cov_inv_scaling!r}")
        if not isinstance(new_camera_pick, bool):
            raise ValueError(f"new_camera_pick must be true or false, got {new_camera_pick!r}")
        self.payback = payback
        self.uncertainty = check_uncertainty(uncertainty)
        self.new_camera_pick = new_camera_pick
        self.cameras = set()  # cameras picked from or seen labelled (new_camera_pick)
        self._cameras_text: Optional[str] = ""  # "\n".join(sorted(cameras)), None when stale
        self.label_rate, self.dim, self.max_per_hour = float(label_rate), dim, max_per_hour
        self.horizon, self.memory, self.cov_inv_scaling, self.seed = horizon, memory, float(cov_inv_scaling), seed
        self.a_inv: Optional[np.ndarray] = None  # (d, d)
        self.sigma: Optional[np.ndarray] = None  # (d, d)
        self.seen = 0
        self.picks = 0
        self.hour: Optional[int] = None
        self.hour_picks = 0
        self.recent = collections.deque(maxlen=RECENT_PICKS)  # frame ids and pixel hashes of picks
        self._recent_set = set()
        self._recent_text: Optional[str] = ""  # "\n".join(recent), None when stale
        # frame id -> its Decision's fields, for the last RECENT_PICKS // 2 picks (picked_decision)
        self.pick_log = collections.OrderedDict()
        self._pick_log_text: Optional[str] = "{}"  # JSON of pick_log, None when stale
        self.decided = DecidedFrames()  # (source, frame index) decided, for the last DECIDED_SOURCES sources
        self._trace = 0.0  # tr(Sigma A^-1), kept up to date in O(1) per frame
        self._shared = False  # a_inv and sigma are referenced by a state handed out: copy before updating

    def describe(self) -> dict:
        """The parameters, as selection ids and candidates record them."""
        return {"name": VESSAL, "label_rate": self.label_rate, "dim": self.dim,
                "max_per_hour": self.max_per_hour, "horizon": self.horizon, "memory": self.memory,
                "cov_inv_scaling": self.cov_inv_scaling, "seed": self.seed, "uncertainty": self.uncertainty,
                "new_camera_pick": self.new_camera_pick, "payback": self.payback}

    def _start(self, d: int):
        self.a_inv = self.cov_inv_scaling * np.eye(d)
        self.sigma = np.zeros((d, d))
        self._trace, self._shared = 0.0, False

    def reset_geometry(self):
        """Forgets ``A^-1`` and ``Sigma`` (a new model: a new embedding space); keeps the counts."""
        self.a_inv = self.sigma = None

    def detach(self):
        """Leaves the arrays of the states handed out so far (:meth:`to_state`) as they are: the next
        decision updates copies of them (one copy of ``2 d^2`` floats, then updates in place)."""
        self._shared = True
        self.decided.detach()

    def _own(self):
        if self._shared:
            self.a_inv, self.sigma = self.a_inv.copy(), self.sigma.copy()
            self._shared = False

    def ideal_rate(self, remaining: Optional[int] = None) -> float:
        """The rate that meets ``label_rate`` ``horizon`` frames from now, in [0, 1] (with
        ``payback="at_once"``: 0 while the state is ahead of ``R (seen + 1)`` picks, and a
        horizon of at most ``max(10, seen + 1)`` frames); with
        ``remaining`` (the frames left in a stream of known length, this one included), the rate
        that meets it at the stream's end, the reference's ``(k - picks) / (N - i)`` with ``k =
        label_rate x N``."""
        frames = self.horizon if remaining is None else max(int(remaining), 1)
        if remaining is None and self.payback == AT_ONCE:
            if self.picks >= self.label_rate * (self.seen + 1):
                return 0.0
            # a young state makes up its deficit sooner: its horizon grows with the frames it has seen
            frames = min(frames, max(MIN_HORIZON, self.seen + 1))
        wanted = self.label_rate * (self.seen + frames) - self.picks
        return float(min(1.0, max(0.0, wanted / frames)))

    def remember(self, *keys: str):
        """Marks frame ids or pixel hashes as picked (refused from now on; the last 512 kept)."""
        for key in keys:
            if key and key not in self._recent_set:
                if len(self.recent) == RECENT_PICKS:
                    self._recent_set.discard(self.recent[0])
                self.recent.append(key)
                self._recent_set.add(key)
                self._recent_text = None

    def picked_decision(self, frame_id: str) -> Optional["Decision"]:
        """The :class:`Decision` that picked ``frame_id``, if it is one of the last
        ``RECENT_PICKS // 2`` picks (else None): what a restarted job re-emits when a pick was
        saved in the state but its candidate never written (a crash in between)."""
        fields = self.pick_log.get(frame_id)
        return None if fields is None else Decision(PICKED, *fields[:6], bool(fields[6]))

    def _log_pick(self, frame_id: Optional[str], decision: "Decision"):
        if not frame_id:
            return
        self.pick_log[frame_id] = [decision.probability, decision.q, decision.zeta, decision.ideal_rate,
                                   decision.seen, decision.picks, int(decision.new_camera)]
        while len(self.pick_log) > RECENT_PICKS // 2:
            self.pick_log.popitem(last=False)
        self._pick_log_text = None

    def was_picked(self, *keys: str) -> bool:
        return any(k in self._recent_set for k in keys if k)

    def decide(self, u: np.ndarray, draw: float, *, event_time: Optional[float] = None,
               keys: Iterable[str] = (), labelled: bool = False, camera: Optional[str] = None,
               remaining: Optional[int] = None, frame: Optional[tuple] = None) -> Decision:
        """Decides one frame and updates the state.

        Parameters
        ----------
        u : ndarray
            float ``(d,)``, the frame's uncertainty-scaled embedding (:class:`Embedder`).
        draw : float
            Uniform in ``[0, 1)`` (:func:`frame_draw`): picked when ``draw < probability``.
        event_time : float, optional
            Seconds since the epoch, for ``max_per_hour``.
        keys : iterable of str
            The frame's id and pixel hash: a frame with a key already picked is refused.
        labelled : bool
            The frame (or its near-duplicate group) is labelled or sent for labelling: refused.
        camera : str, optional
            The frame's camera, for ``new_camera_pick`` (None: the frame is not its camera's
            first; it covers no camera).
        remaining : int, optional
            In a stream of known length (a batch pass), the frames left, this one included: the
            rate then meets ``label_rate`` at the stream's end (:meth:`ideal_rate`), not
            ``horizon`` frames ahead.
        frame : (str, int), optional
            The frame's source and index in it: a frame this state has decided already comes
            back as ``decided_before`` and changes nothing (:class:`DecidedFrames`).

        Every frame counts in ``seen`` and in ``Sigma`` (refused ones too: they are part of the
        stream the rate is a share of).

        Raises
        ------
        ValueError
            For a ``u`` of another width than the state's, or not finite.
        """
        if frame is not None and frame in self.decided:
            return Decision(DECIDED_BEFORE, 0.0, 0.0, 0.0, self.ideal_rate(remaining), self.seen, self.picks)
        u = np.asarray(u, dtype=np.float64).ravel()
        if self.a_inv is None:
            self._start(u.size)
        elif u.size != self.a_inv.shape[0]:
            raise ValueError(f"u has width {u.size}, the state {self.a_inv.shape[0]}")
        ideal = self.ideal_rate(remaining)
        v = self.a_inv @ u
        q = float(u @ v)
        if not math.isfinite(q):  # A^-1 is finite: a non-finite u (checked before any update)
            raise ValueError("u is not finite (a non-finite embedding or probabilities)")
        keys = tuple(keys)
        # Running second moment: the mean of the first `memory` frames, then their moving average.
        beta = 1.0 / min(self.seen + 1, self.memory)
        self._own()
        self.sigma *= 1.0 - beta
        self.sigma += np.outer(u, beta * u)
        # tr(Sigma A^-1) after that update: (1 - beta) tr(Sigma_old A^-1) + beta u^T A^-1 u, O(1);
        # recomputed exactly (a Frobenius product, O(d^2)) whenever A^-1 changes.
        self._trace = (1.0 - beta) * self._trace + beta * q
        trace = self._trace
        zeta = ideal / trace if trace > 0 else 0.0
        probability = min(1.0, zeta * q)
        new_camera = (self.new_camera_pick and camera is not None and camera not in self.cameras and q > 0
                      and not labelled)
        if new_camera:
            probability = 1.0
        self.seen += 1
        if frame is not None:
            self.decided.add(*frame)
        if labelled:
            outcome = LABELLED
            self._cover(camera)  # a camera with a labelled frame is covered
        elif self.was_picked(*keys):
            outcome = ALREADY_PICKED
        elif not draw < probability:
            outcome = SKIPPED
        elif self._capped(event_time):
            outcome = CAPPED
        else:
            outcome = PICKED
            self.a_inv -= np.outer(v, v / (1.0 + q))  # Sherman-Morrison
            self._trace = float(np.vdot(self.sigma, self.a_inv))  # both symmetric: the trace, O(d^2)
            self.picks += 1
            self.hour_picks += 1
            self.remember(*keys)
            self._cover(camera)
        if outcome in (LABELLED, ALREADY_PICKED):
            probability, new_camera = 0.0, False
        decision = Decision(outcome, float(probability), q, float(zeta), ideal, self.seen, self.picks, bool(new_camera))
        if outcome == PICKED:
            self._log_pick(keys[0] if keys else None, decision)
        return decision

    def _cover(self, camera: Optional[str]):
        if camera is not None and camera not in self.cameras:
            self.cameras.add(camera)
            self._cameras_text = None

    def _capped(self, event_time: Optional[float]) -> bool:
        if not self.max_per_hour:
            return False
        hour = int(np.floor(event_time / HOUR_S)) if event_time is not None else self.hour
        if hour != self.hour:
            self.hour, self.hour_picks = hour, 0
        return self.hour_picks >= self.max_per_hour

    # --- state as plain data (Beam state coder, MongoDB snapshot) ------------------------------

    def to_state(self) -> dict:
        """The state as a dict of numbers, strings and float64 arrays (:meth:`from_state` reverses
        it). Its arrays ARE the sampler's, which updates them in place: call :meth:`detach` before
        the next decision to keep this state as it is (the Beam transform does at each bundle)."""
        if self._recent_text is None:
            self._recent_text = "\n".join(self.recent)  # one string: pickled 50x faster than a list
        if self._cameras_text is None:
            self._cameras_text = "\n".join(sorted(self.cameras))
        if self._pick_log_text is None:
            self._pick_log_text = json.dumps(self.pick_log)
        return {"params": self.describe(), "a_inv": self.a_inv, "sigma": self.sigma, "seen": self.seen,
                "picks": self.picks, "hour": self.hour, "hour_picks": self.hour_picks,
                "recent": self._recent_text, "trace": self._trace, "cameras": self._cameras_text,
                "pick_log": self._pick_log_text, "decided": self.decided.to_state()}

    def load_state(self, state: dict) -> "VeSSAL":
        """Takes ``A^-1``, ``Sigma``, counts and recent picks from :meth:`to_state`'s dict (the
        parameters stay this sampler's: a restart may change ``label_rate``); returns ``self``."""
        for name in ("a_inv", "sigma"):
            value = state.get(name)
            # Shared with the state until the first decision copies them (decisions update in place).
            setattr(self, name, None if value is None else np.ascontiguousarray(value, dtype=np.float64))
        self._shared = True
        if self.a_inv is not None:
            trace = state.get("trace")
            self._trace = float(np.vdot(self.sigma, self.a_inv)) if trace is None else float(trace)
        self.seen, self.picks = int(state["seen"]), int(state["picks"])
        self.hour, self.hour_picks = state.get("hour"), int(state.get("hour_picks", 0))
        recent = state.get("recent") or ""
        recent = (recent.split("\n") if recent else []) if isinstance(recent, str) else list(recent)
        self.recent = collections.deque(recent[-RECENT_PICKS:], maxlen=RECENT_PICKS)
        self._recent_set = set(self.recent)
        self._recent_text = None
        cameras = state.get("cameras") or ""
        self.cameras = set(cameras.split("\n")) if cameras else set()
        self._cameras_text = None
        self.pick_log = collections.OrderedDict(json.loads(state.get("pick_log") or "{}"))
        self._pick_log_text = None
        self.decided = DecidedFrames(state.get("decided"))  # shared with the state until the first add
        return self

    @classmethod
    def from_state(cls, state: dict) -> "VeSSAL":
        """A sampler with the parameters and state of :meth:`to_state`'s dict."""
        params = dict(state["params"])
        params.pop("name", None)
        label_rate, dim = params.pop("label_rate"), params.pop("dim")
        return cls(label_rate, dim, **params).load_state(state)
