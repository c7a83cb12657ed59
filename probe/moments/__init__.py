"""Closed-form per-domain gradients and Hessians of a softmax linear head, and the
CMA penalties built from them (see docs/cma-math.md for the derivations).

Functional API in the style of ``torch.nn.functional``:

* ``theta`` is ``(C, d+1)`` for one head or ``(G, C, d+1)`` for a grid of G heads
  (last column: bias), or ``(C, d)`` / ``(G, C, d)`` for heads without a bias, with
  ``bias=False`` (every function takes it; derivatives are then w.r.t. the weights
  alone and ``x̃ = x``); ``X`` is ``(N, d)`` without the ones column; ``y`` and
  ``domains`` are int64 ``(N,)``, domain ids non-negative (``0..K-1`` with ``num_domains``).
* Results for one head drop the leading G axis; a grid returns one value per head.
* Only domains with rows in the batch count: ``K'`` is the number of *present*
  domains, ordered by id (``present_domains`` maps the K' columns back to ids).
  With fewer than two present domains both penalties are zero (still
  differentiable, with a zero gradient).
* Every function runs on the device and in the dtype of ``theta`` (float32 or
  float64, CPU or CUDA); no Python loop runs over samples.

Penalties (over the K' present domains, ``G_e`` and ``H_e`` the gradient and
Hessian of domain e's mean cross-entropy w.r.t. the flattened head, bias included):

    R_g = (1/K') sum_e ||G_e - mean_f G_f||_F^2      gradient_variance
    R_H = (1/K') sum_e ||H_e - mean_f H_f||_F^2      hessian_variance

Both are differentiable w.r.t. ``theta`` by one ordinary backward pass (no
double backward, no sampling). They are computed with *centred* domain weights:
``H_e - H̄ = sum_i c_ie A_i ⊗ x̃_i x̃_iᵀ`` with ``c_ie = [i in e]/n_e - (1/K') sum_f [i in f]/n_f``,
so no cancellation between large per-domain quantities happens.

``hessian_variance`` methods (all exact; they agree to rounding):

* ``"direct"``: forms every per-domain Hessian (Kronecker layout, ``C²·d̃²`` per
  domain and head) and takes the variance literally. Reference for small problems.
* ``"kernel"``: the ``N×N`` form. ``S = (X̃X̃ᵀ)∘(X̃X̃ᵀ)`` and ``T = S ∘ (c cᵀ)``
  depend on the features and domains only, so one ``T`` serves every head, and
  ``K'·R_H = <κ_P, T>`` with ``κ_P(i,j) = <A_i, A_j>_F``, ``A_i = diag(p_i) - p_i p_iᵀ``.
  Per head it then uses the cheapest of:
  ``C = 2``: ``A_i = q_i J`` (``q_i = p_i1 p_i2``, ``||J||² = 4``), so
  ``K'·R_H = 4 qᵀ T q``: one matmul ``T @ [N × G]`` for the whole grid;
  small ``C`` (``C = 3`` by the cost rule): ``κ_P`` expanded over the ``C(C+1)/2`` distinct entries of ``A``
  (off-diagonal ones weighted 2), one matmul ``T @ [N × G·C(C+1)/2]``;
  larger ``C``: ``<κ_P, T> = tr(PᵀTP) - 2 tr((P∘P)ᵀTP) + <(PPᵀ)∘(PPᵀ), T>``, i.e. one
  matmul ``T @ [N × 2·G·C]`` plus two ``N×N×C`` products per head (``O(G N² C)``),
  with a hand-written backward that keeps no per-head ``N×N`` tensor, so memory
  stays ``O(N² + G N C)`` (heads are chunked by ``ELEMENTWISE_CHUNK_BYTES``). That
  backward is once-differentiable (no double backward); if ``X`` itself requires
  grad, a plain autograd version is used instead so gradients reach ``X`` too.
  Pass ``kernel=feature_kernel(X)`` to reuse ``S`` across calls on the same rows.
* ``"binary"`` (``C = 2`` only): ``R_H = 4 (1/K') sum_e ||M_e - M̄||_F²`` with the
  ``d̃×d̃`` moments ``M_e = (1/n_e) sum_{i in e} q_i x̃_i x̃_iᵀ``; ``O(N d̃²)`` time, the
  choice when ``N >> d``.
* ``"auto"``: the method with the fewest estimated floating-point operations
  (forward plus backward, ``hessian_costs``) among those whose estimated peak
  memory fits in ``AUTO_MEMORY_BUDGET`` bytes; if none fits, the one with the
  smallest estimated memory. In practice: kernel when ``N ≲ d`` (and for any grid
  of small heads), binary when ``N >> d`` and ``C = 2``, direct only for tiny
  problems.

``gradient_variance`` has ``"direct"`` (per-domain gradients, ``O(G K' N C d̃)``)
and ``"kernel"`` (``K'·R_g = tr(Rᵀ T_g R)`` with ``R = P - Y`` and
``T_g = (X̃X̃ᵀ) ∘ (c cᵀ)``, ``O(N² (d̃ + G C))``), ``"auto"`` choosing by the same rule.
``penalty_terms`` returns the per-domain losses and both penalties from one
logits pass, sharing the Gram matrix between them: the call a trainer wants.

Beyond the paper (``third``, ``discrepancy``, with the cumulant kernels they share
in ``cumulants``):

    R_3 = (1/K') sum_e ||D_e - mean_f D_f||^2        third_order_variance

with ``D_e`` the third derivative of domain e's mean cross-entropy,
``(1/n_e) sum_i kappa_3(p_i) ⊗ x̃_i^{⊗3}`` (``kappa_3`` the third logit cumulant), in
the kernel form of R_H with cubes in place of squares (``O(N² (d̃ + C))`` per head,
memory ``O(N² + G N C)``); and ``domain_discrepancies``: per-domain losses and
``||∇ⁿL_e − ∇ⁿL_f||_F`` for every pair of domains and n = 1, 2, 3, the terms of the
paper's transfer bound, from the domain Gram matrices of the same kernels.

Normalisation (``normalize``):

* ``None`` (default): the definitions above.
* ``"dC"``: the authors' linear-probing scaling. Their linear-probing code (class
  ``HISRClassifier`` of their ``real_datasets`` code, built on the ISR code base; read via
  the public code index, repository name not shown there; its training loss
  ``exact_hessian_loss`` calls ``grad_pen`` and ``hessian_pen``, built on ``gradient`` and
  ``hessian``) fits a head ``nn.Linear(d, C, bias=False)``
  and divides each per-domain gradient ``(P-Y)ᵀX/n_e`` and each per-domain Hessian by
  ``d·C``, where ``d = x.shape[1]`` is the number of feature columns and ``C`` the number
  of classes; their penalties are then the same variances, so both penalties scale by
  ``1/(d·C)²``. (A memory-saving Hessian penalty, ``hessian_pen_mem``, sits in a separate
  helper class, ``HessianPenModel``, and divides by ``C²`` alone; the training loss does
  not call it.) Here ``"dC"`` divides ``G_e`` and ``H_e`` by ``d·C`` with ``d =
  X.shape[1]`` (the feature columns, *not* ``d+1``), so their published α, β grids keep
  their meaning. With ``bias=False`` the head is theirs; with a bias, its gradient row
  and Hessian block are included. One difference remains: we average over present
  domains (their gradient penalty divides by the configured number of environments).
  Their full fine-tuning code uses other factors (``C`` for the Hessian, ``√C`` or ``C``
  for the gradient, per docs/cma-math.md); those are not offered.
"""

from probe.moments.basics import (
    NORMALIZE_OPTIONS,
    Normalize,
    augment,
    design,
    domain_rows,
    domain_sums,
    domain_weights,
    feature_gram,
    feature_kernel,
    log_softmax,
    logits,
    present_domains,
    probabilities,
    softmax,
)
from probe.moments.cumulants import cumulant_kernels
from probe.moments.discrepancy import DomainDiscrepancies, domain_discrepancies
from probe.moments.gradient import (
    GRAD_METHODS,
    GradMethod,
    choose_gradient_method,
    gradient_variance,
    per_domain_gradients,
    per_domain_losses,
)
from probe.moments.hessian import (
    AUTO_MEMORY_BUDGET,
    ELEMENTWISE_CHUNK_BYTES,
    METHODS,
    Method,
    choose_hessian_method,
    hessian_costs,
    hessian_variance,
)
from probe.moments.penalties import Penalties, penalty_terms, variances_from_logits
from probe.moments.third import (
    THIRD_METHODS,
    ThirdMethod,
    choose_third_method,
    third_order_costs,
    third_order_variance,
    third_variance_from_logits,
)

__all__ = [
    "AUTO_MEMORY_BUDGET", "ELEMENTWISE_CHUNK_BYTES", "GRAD_METHODS", "METHODS", "NORMALIZE_OPTIONS",
    "THIRD_METHODS", "DomainDiscrepancies", "GradMethod", "Method", "Normalize", "Penalties", "ThirdMethod",
    "augment", "choose_gradient_method", "choose_hessian_method", "choose_third_method", "cumulant_kernels",
    "design", "domain_discrepancies", "domain_rows", "domain_sums", "domain_weights", "feature_gram", "feature_kernel", "gradient_variance",
    "hessian_costs", "hessian_variance", "log_softmax", "logits", "penalty_terms", "per_domain_gradients", "per_domain_losses",
    "present_domains", "probabilities", "softmax", "third_order_costs", "third_order_variance", "third_variance_from_logits",
    "variances_from_logits",
]
