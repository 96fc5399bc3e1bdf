r"""BOD: Wang et al., "Efficient Bi-Level Optimization for Recommendation Denoising" (KDD 2023,
arXiv:2210.10321), as ``denoise: bod`` for any pairwise model the trainer can train.

BOD casts denoising as a bi-level problem over per-interaction weights W and recommender
parameters θ:

- inner problem: θ*(W) = argmin_θ L_inner(θ, W), the recommender trained on the weighted loss;
- outer problem: W* = argmin_W L_outer(θ*(W)), the weights chosen for what they do to θ.

Solving it exactly needs θ*(W) for every W (unrolled inner training). The paper makes it
cheap in two ways:

1. **Weight generator.** W is not stored per interaction: a small network g_φ maps the
   recommender's current (user, item) representations to a weight in (0, 1), so the outer
   problem optimises φ. Authors' layout (``model/graph/BOD.py``, ``GraphGenerator_VAE``, whose
   VAE branch is unused): concat(e_u, e_i) (2d) → Linear(2d, 64) → ReLU → Linear(64, 64) →
   Linear(64, 1) → sigmoid. Here the width is ``bod_hidden``. The recommender never gets a
   gradient through the generator: its weights are detached in the inner step, and the outer
   step works on a detached copy of the representations.
2. **One-step gradient matching.** Instead of unrolling the inner optimisation, φ takes a
   step that makes the gradients of two weighted losses with respect to the recommender agree
   (a gradient-matching loss borrowed from dataset condensation, Zhao et al., ICLR 2021).

What the authors' code does (github.com/CoderWZW/BOD, ``model/graph/BOD.py`` ``BOD.train``,
losses in ``util/loss_torch.py``, defaults in ``conf/BOD.conf``), and what is kept here:

- **Inner step** (every train batch; the generator frozen, its weights detached):
  :math:`L_{inner} = L_{wBPR} + \lambda_a L_{align} + \lambda_u L_{unif}` with

  - :math:`L_{wBPR} = \mathrm{mean}\,[-\log\sigma(w_{ui}\,\hat y_{ui} - w_{uj}\,\hat y_{uj})]`:
    the weights scale the *scores* of the positive (u, i) and of the sampled negative (u, j)
    (``bpr_loss_weight``), so a small w_ui damps the push on a suspected false positive and a
    small w_uj that on a suspected false negative. Here it is the model's own BPR: its
    ``BPRLoss`` module is swapped for :class:`WeightedBPRLoss`, as ``tce``/``rce`` do;
  - :math:`L_{align} = \mathrm{mean}\,[w_{ui}\,\lVert\bar e_u - \bar e_i\rVert^2]` on
    L2-normalised representations (``alignment_loss_weight_1``), weight ``bod_alignment_weight``
    (``-weight_alignment 1``);
  - :math:`L_{unif}`: DirectAU's uniformity log mean exp(−2‖x̄ − ȳ‖²) over the batch rows,
    averaged over users (counted twice, as the code does), positive and negative items,
    weight ``bod_uniformity_weight`` (``-weight_uniformity 0.5``).

- **Outer step** (``-outer_loop 1`` step after each ``-inner_loop 1`` epoch of inner
  training, on a random train batch with fresh negatives; here ``bod_outer_steps`` steps
  every ``bod_outer_every`` epochs, each on a freshly drawn train batch): with
  :math:`G_{real} = \nabla L_{wBPR}(w_\phi)` and :math:`G_{syn} = \nabla L_{align}(w_\phi)`,
  the gradients of the generator-weighted BPR and of the generator-weighted alignment loss
  (both built with ``create_graph`` so they depend on φ),

  .. math:: L_{outer}(\phi) = \sum_{M} \sum_{k} \Bigl(1 - \frac{\langle G^{M}_{real,:k},
            G^{M}_{syn,:k}\rangle}{\lVert G^{M}_{real,:k}\rVert\,\lVert G^{M}_{syn,:k}\rVert
            + 10^{-6}}\Bigr)

  summed over the gradient matrices M and their columns k (one cosine per embedding
  dimension, taken over the rows: ``match_loss``/``distance_wb``, 1-D parameters skipped),
  and φ takes one Adam step (``-generator_lr 0.001``).

Differences from that code, all deliberate:

- The authors differentiate with respect to the backbone's parameters (for their MF and
  LightGCN: the ID embedding tables). To stay model-agnostic, :math:`G` here is the gradient
  with respect to the representations the model exposes (``forward()``'s users and items):
  identical for MF-like models (BPR), the pre-Jacobian gradient for deeper ones, and no
  second-order pass through arbitrary model code. Pairs are scored by the dot product of those
  representations in the outer step, as in the authors' ``bpr_loss_weight``.
- In the outer step the authors weight the positive as ``model_generator(pos_user_emb_ol,
  pos_user_emb_ol)`` (the user paired with itself), evidently a slip for (user, item), which
  their inner step uses; here the positive weight is g(e_u, e_i) in both steps.
- Their outer step adds ``l2_reg_loss(generator_reg, user_emb, item_emb)``, a term that does
  not depend on φ and so never moves the generator (``-generator_reg``): left out.

Kept as the authors have it, though it looks incidental: in the outer step the generator's
inputs are the very representations the gradients are taken with respect to, so G is the total
derivative, including the path through the generator's input. On the hand-built case of
``tests/test_bod.py`` (three clusters, 20% injected cross-cluster pairs) this gave a steady
separation (clean minus injected mean weight 0.012-0.017 over 4 seeds and 150-600 steps);
with the inputs detached it was erratic (-0.005 to 0.035 over the same runs).

Equation numbers: the paper's text could not be consulted while this was written (only the
authors' code), so no equation numbers are cited and the equations above are read from the
code. For the same reason no search grid is given; the defaults are the authors' released
configuration (``conf/BOD.conf``: batch 512, embedding 64, learning rate 0.001, 100 epochs,
LightGCN backbone). ``run_grid(..., hyper_parameters={"bod_generator_lr": [...], ...})``
sweeps the ``bod_*`` keys like any other.

Where representations come from (:func:`representation_route`): ``model.forward()`` when it
takes no argument and returns (user matrix, item matrix) (the plugin's models, LightGCN, NGCF,
...); else ``get_user_embedding(ids)`` / ``get_item_embedding(ids)`` over every id (RecBole's
BPR, whose ``forward`` is ``forward(user, item)``); else a ValueError naming the model.
"""
import inspect
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm import collectives
from recbole_mm.errors import ConfigError
from recbole_mm.model.loss import install_denoising_loss

# key -> (check, what it must be); the defaults are in properties/overall.yaml
BOD_KEYS = {
    "bod_generator_lr": (lambda v: _real(v) and v > 0, "a number > 0"),
    "bod_hidden": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "bod_outer_steps": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "bod_outer_every": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "bod_alignment_weight": (lambda v: _real(v) and v >= 0, "a number >= 0"),
    "bod_uniformity_weight": (lambda v: _real(v) and v >= 0, "a number >= 0"),
}


def _real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


def _integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def checked_bod_config(config):
    """The ``bod_*`` keys of ``config`` as a dict, or a ValueError naming the first bad key."""
    values = {}
    for key, (valid, wanted) in BOD_KEYS.items():
        value = config[key]
        if not valid(value):
            raise ConfigError(f"{key} must be {wanted} for denoise: bod, got {value!r}")
        values[key] = value
    return values


class WeightGenerator(nn.Module):
    """g_φ(e_u, e_i) ∈ (0, 1): the weight of the pair (u, i) from its two representations,
    2d → hidden → ReLU → hidden → 1 → sigmoid (the authors' layout)."""

    def __init__(self, dim, hidden=64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        )

    def forward(self, user_e, item_e):
        """(B x d), (B x d) -> (B,) weights."""
        return torch.sigmoid(self.layers(torch.cat([user_e, item_e], dim=-1))).squeeze(-1)


class WeightedBPRLoss(nn.Module):
    r"""BPR with the scores scaled by per-row weights, :math:`\mathrm{mean}[-\log\sigma(w^+ s^+ -
    w^- s^-)]` (BOD's inner loss); with no weights set it is plain BPR.

    Same call signature as RecBole's ``BPRLoss``. The trainer sets the batch's weights with
    :meth:`set_weights` before the model's ``calculate_loss`` runs; every BPR call of that
    batch (FREEDOM makes three) uses them, row i of the scores being row i of the batch.
    """

    def __init__(self):
        super().__init__()
        self.pos_weight = self.neg_weight = None

    def set_weights(self, pos_weight=None, neg_weight=None):
        self.pos_weight, self.neg_weight = pos_weight, neg_weight

    def forward(self, pos_score, neg_score):
        pos_score, neg_score = pos_score.reshape(-1), neg_score.reshape(-1)
        if self.pos_weight is not None:
            if len(self.pos_weight) != len(pos_score) or len(self.neg_weight) != len(neg_score):
                raise ValueError(
                    f"denoise: bod weights the batch's rows ({len(self.pos_weight)}), but the model's "
                    f"BPR got {len(pos_score)} positive and {len(neg_score)} negative scores"
                )
            pos_score, neg_score = self.pos_weight * pos_score, self.neg_weight * neg_score
        return -F.logsigmoid(pos_score - neg_score).mean()


def weighted_alignment(user_e, item_e, weight):
    """mean(w · ‖normalise(e_u) − normalise(e_i)‖²) over the rows (DirectAU alignment, weighted)."""
    gap = F.normalize(user_e, dim=-1) - F.normalize(item_e, dim=-1)
    return (weight * gap.pow(2).sum(-1)).mean()


def uniformity(x, t=2.0):
    """log mean exp(−t ‖x̄_a − x̄_b‖²) over the pairs of rows (DirectAU uniformity)."""
    if len(x) < 2:
        return x.new_zeros(())
    return torch.pdist(F.normalize(x, dim=-1), p=2).pow(2).mul(-t).exp().mean().log()


def column_cosine_distance(a, b, eps=1e-6):
    """Σ_k (1 − cos(a[:, k], b[:, k])): one cosine per column, taken over the rows (the
    authors' ``distance_wb`` for a 2-D gradient; all-zero rows add nothing)."""
    if a.dim() == 1:  # the authors skip 1-D parameters
        return a.new_zeros(())
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cosine = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0) + eps)
    return (1 - cosine).sum()


def gradient_matching_loss(generator, user_all, item_all, users, pos_items, neg_items):
    r"""BOD's outer objective for one batch (see the module docstring): Σ column-cosine
    distances between :math:`\nabla L_{wBPR}` and :math:`\nabla L_{align}`, both weighted by
    ``generator`` and both taken with respect to ``user_all``/``item_all``, which are detached
    from the model first: the result is differentiable in the generator's parameters only."""
    user_all = user_all.detach().requires_grad_(True)
    item_all = item_all.detach().requires_grad_(True)
    user_e, pos_e, neg_e = user_all[users], item_all[pos_items], item_all[neg_items]
    # not detached here: as in the authors' outer step, each gradient is the total derivative
    # with respect to the representations, the path through the generator's input included
    pos_w, neg_w = generator(user_e, pos_e), generator(user_e, neg_e)
    margin = pos_w * (user_e * pos_e).sum(-1) - neg_w * (user_e * neg_e).sum(-1)
    real = -F.logsigmoid(margin).mean()
    syn = weighted_alignment(user_e, pos_e, pos_w)
    grads_real = torch.autograd.grad(real, (user_all, item_all), create_graph=True)
    grads_syn = torch.autograd.grad(syn, (user_all, item_all), create_graph=True)
    return sum(column_cosine_distance(r, s) for r, s in zip(grads_real, grads_syn))


def _forward_takes_no_argument(model):
    try:
        inspect.signature(model.forward).bind()
    except TypeError:
        return False
    return True


def representation_route(model, mode="bod"):
    """``"forward"`` or ``"embeddings"``: how :func:`representations` reads ``model``'s (user,
    item) representations; a ConfigError naming the model and ``denoise: <mode>`` when it has
    neither route."""
    if _forward_takes_no_argument(model):
        return "forward"
    if callable(getattr(model, "get_user_embedding", None)) and callable(getattr(model, "get_item_embedding", None)):
        return "embeddings"
    raise ConfigError(
        f"denoise: {mode} needs {type(model).__name__}'s user and item representations "
        + ("for its weight generator" if mode == "bod" else "to weigh its BPR rows")
        + ", but the model has neither forward() without arguments returning (users, items) "
        "nor get_user_embedding / get_item_embedding"
    )


def representations(model, route, mode="bod"):
    """(user matrix (n_users x d), item matrix (n_items x d)) of ``model`` by ``route``."""
    if route == "forward":
        output = model.forward()
    else:
        device = next(model.parameters()).device
        output = (model.get_user_embedding(torch.arange(model.n_users, device=device)),
                  model.get_item_embedding(torch.arange(model.n_items, device=device)))
    return checked_representations(model, output, route, mode)


def checked_representations(model, output, route, mode="bod"):
    """``output`` when it is (users (n_users x d), items (n_items x d)) of one width d; else a
    ConfigError saying that ``model`` cannot be trained with ``denoise: <mode>``."""
    valid = (isinstance(output, (tuple, list)) and len(output) == 2
             and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in output)
             and output[0].shape[0] == model.n_users and output[1].shape[0] == model.n_items
             and output[0].shape[1] == output[1].shape[1])
    if not valid:
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                  for t in (output if isinstance(output, (tuple, list)) else [output])]
        source = "forward()" if route == "forward" else "get_user_embedding/get_item_embedding"
        raise ConfigError(
            f"denoise: {mode} weighs a pair by its user and item vectors, so it needs (users "
            f"({model.n_users} x d), items ({model.n_items} x d)) from {type(model).__name__}.{source}, "
            f"which gave {shapes}: {type(model).__name__} cannot be trained with denoise: {mode}"
        )
    return tuple(output)


class PatchedForward:
    """Within a ``with`` block, ``model.forward(...)`` goes through :meth:`call` with the forward
    it replaces (``inner``); a forward patched on the instance before (GUIDER's memoised forward)
    is the one wrapped, and restored on exit."""

    def __init__(self, model):
        self.model = model

    def call(self, inner, *args, **kwargs):
        raise NotImplementedError

    def __enter__(self):
        self.previous = self.model.__dict__.get("forward")
        inner = self.previous or type(self.model).forward.__get__(self.model)
        self.model.forward = lambda *args, **kwargs: self.call(inner, *args, **kwargs)
        return self

    def __exit__(self, *exc):
        self.model.__dict__.pop("forward", None)
        if self.previous is not None:
            self.model.forward = self.previous
        return False


class _SharedForward(PatchedForward):
    """Within a ``with`` block, ``model.forward()`` (no arguments) returns ``result``, so the
    model's ``calculate_loss`` reuses the pass BOD already made."""

    def __init__(self, model, result):
        super().__init__(model)
        self.result = result

    def call(self, inner, *args, **kwargs):
        return inner(*args, **kwargs) if args or kwargs else self.result


class BOD:
    """BOD's state in a trainer: the weight generator and its optimiser, the model's
    :class:`WeightedBPRLoss`, the inner batch loss and the outer step.

    Args:
        config: the run's config (``bod_*`` keys, ``device``).
        model: the recommender; its ``BPRLoss`` modules are replaced here.
    """

    def __init__(self, config, model):
        settings = checked_bod_config(config)
        self.model = model
        self.route = representation_route(model)
        self.outer_steps, self.outer_every = settings["bod_outer_steps"], settings["bod_outer_every"]
        self.alignment_weight = float(settings["bod_alignment_weight"])
        self.uniformity_weight = float(settings["bod_uniformity_weight"])
        with torch.no_grad():
            dim = representations(model, self.route)[0].shape[1]
        self.loss = WeightedBPRLoss()
        install_denoising_loss(model, self.loss)
        self.generator = WeightGenerator(dim, settings["bod_hidden"]).to(config["device"])
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=float(settings["bod_generator_lr"]))
        self.last_outer_loss = None
        self.config = config
        collectives.broadcast_module(self.generator, config)  # distributed: rank 0's generator everywhere

    def _ids(self, interaction):
        model = self.model
        return interaction[model.USER_ID], interaction[model.ITEM_ID], interaction[model.NEG_ITEM_ID]

    @torch.no_grad()
    def weights(self, users, items, user_all=None, item_all=None):
        """Generator weights of the pairs (users[k], items[k]), (B,), from the given
        representations (a fresh pass of the model when omitted)."""
        if user_all is None:
            user_all, item_all = representations(self.model, self.route)
        return self.generator(user_all[users].detach(), item_all[items].detach())

    def inner_loss(self, loss_func):
        """``loss_func`` (the model's ``calculate_loss``) run with this batch's generator weights
        set on the model's BPR, plus the weighted alignment and the uniformity terms."""
        def loss(interaction):
            users, pos_items, neg_items = self._ids(interaction)
            with_au = self.alignment_weight > 0 or self.uniformity_weight > 0
            with torch.set_grad_enabled(with_au):
                user_all, item_all = representations(self.model, self.route)
            pos_weight = self.weights(users, pos_items, user_all, item_all)
            self.loss.set_weights(pos_weight, self.weights(users, neg_items, user_all, item_all))
            try:
                if with_au and self.route == "forward":
                    with _SharedForward(self.model, (user_all, item_all)):
                        result = loss_func(interaction)
                else:
                    result = loss_func(interaction)
            finally:
                self.loss.set_weights()
            if not with_au:
                return result
            user_e, pos_e, neg_e = user_all[users], item_all[pos_items], item_all[neg_items]
            extra = self.alignment_weight * weighted_alignment(user_e, pos_e, pos_weight)
            extra = extra + self.uniformity_weight * (
                2 * uniformity(user_e) + uniformity(pos_e) + uniformity(neg_e)) / 4
            return tuple(result) + (extra,) if isinstance(result, tuple) else result + extra
        return loss

    def outer_step(self, interaction):
        """One Adam step of the generator on :func:`gradient_matching_loss` for the batch;
        returns the loss value before the step."""
        users, pos_items, neg_items = self._ids(interaction)
        with torch.no_grad():
            user_all, item_all = representations(self.model, self.route)
        self.generator.train()
        loss = gradient_matching_loss(self.generator, user_all, item_all, users, pos_items, neg_items)
        self.optimizer.zero_grad()
        loss.backward(inputs=list(self.generator.parameters()))
        collectives.average_gradients(self.generator, self.config)  # distributed: as DDP does
        self.optimizer.step()
        self.last_outer_loss = float(loss.detach())
        return self.last_outer_loss

    def outer_due(self, epoch_idx):
        """Whether the generator steps after epoch ``epoch_idx`` (counted from 0)."""
        return self.outer_steps > 0 and (epoch_idx + 1) % self.outer_every == 0

    def outer_round(self, train_data):
        """``bod_outer_steps`` generator steps, each on a freshly drawn train batch."""
        losses = []
        for _ in range(self.outer_steps):
            batch = next(iter(train_data)).to(next(self.model.parameters()).device)
            losses.append(self.outer_step(batch))
        return losses
