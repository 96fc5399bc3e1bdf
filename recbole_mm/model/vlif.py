r"""VLIF: VLM-enriched visual features and information-aware fusion (arXiv 2511.02113, §2).

Two profiles. The paper's Table 1 was produced by its public code, whose settings differ
from the paper's text; the packaged default (``VLIF.yaml``) is the code's (branch ``redu2``),
``properties/vlif_paper.yaml`` the text's (and ``properties/vlif_master.yaml`` the
synergy-only ``master`` branch):

=======================  ==========================  ==============================
key                      code (default)              paper's text
=======================  ==========================  ==============================
learning_rate            1e-4                        1e-3
train_batch_size         2048                        1024
fusion_weight (λ)        0.01 (master: 0.001)        0.1
n_mm_layers/n_uu_layers  1 / 1                       2 / 2
stopping_step            30                          20
log2_bpr                 True (−log₂ σ)              False (−ln σ)
ssl_items                all (InfoNCE over I items)  batch
linear_branches          [image] (master: [])        []
user_graph_sampling      fixed (top 40)              resample (each epoch)
redundancy_variant       redu2                       paper
=======================  ==========================  ==============================

Built on DRAGON's skeleton (:class:`~recbole_mm.model.dragon.DRAGON`): per-branch GCNs on the
user–item graph (Eq. 1–2), the frozen kNN item–item graph with
:math:`S = \tfrac12 (S_v + S_t)` and k = 10 (Eq. 3), the user–user co-occurrence graph, and
the score :math:`z_i^\top z_u` (Eq. 4). The visual modality is the dataset's ``image``
modality; with VLIF's features it holds the encoded VLM descriptions
(:mod:`recbole_mm.features.vlm`, Eq. 5). Each branch's item MLP is ``dim -> 4d -> d``;
``linear_branches`` names those that use the code's single ``Linear(dim -> d)`` + LeakyReLU
(``redu2``: the visual branch; ``master``: none).

Information-aware fusion (§2.3), on the item features ``t``, ``v`` (both brought to
``fusion_dim`` by a linear map when their width differs):

- synergy (Eq. 7–8): :math:`h_{v\to t} = \mathrm{Self}(\mathrm{Cross}(v, t))`,
  :math:`h_{t\to v} = \mathrm{Self}(\mathrm{Cross}(t, v))` with MulT encoders
  (:class:`MulTEncoder`: inputs scaled by √d, a pre-LN block whose query and context share
  one LayerNorm, a LayerNorm after the block), :math:`s = \tfrac12 (h_{v\to t} + h_{t\to v})`;
- redundancy (Eq. 9–11), :class:`RedundancyEncoder`: the paper's ordering, a shared encoder
  over the token sequences ``[v, t]``, ``[v, MASK_t]``, ``[MASK_v, t]`` then a projection
  (``redundancy_variant: paper``), or the code's, the projection of ``[t ‖ v]``,
  ``[0 ‖ v]``, ``[t ‖ 0]`` then the encoder (``redu2``); :math:`r = \tfrac13 (h + h_v + h_t)`;
- unique visual part (Eq. 12): :math:`v' = v - \frac{v^\top r}{\|r\|^2} r`
  (:func:`orthogonal_residual`, then L2-normalised as in the public code);
- item :math:`i_f = [t \| s \| v']` and user :math:`u_f = [w_{u0} t \| w_{u1} s \| w_{u2} v']`
  (Eq. 13–14), where t, s, v' are the outputs of three GCN branches fed with the fused
  item features, and w is a free U x 3 table (softmax-of-Xavier initialisation, as DRAGON).

Homogeneous graphs: :math:`z_i = i_f + G^{L} i_f`, :math:`z_u = \tfrac12 (u_f + U^{L} u_f)`
(the public code's residuals), L = ``n_mm_layers`` / ``n_uu_layers``.

Loss (Eq. 15–17): :math:`\mathcal L_{rec} + \lambda (\mathcal L_s + \mathcal L_r)` with
:math:`\mathcal L_s = \mathrm{InfoNCE}(h_{v\to t}, h_{t\to v})` and :math:`\mathcal L_r =
\mathrm{InfoNCE}(h, h_v) + \mathrm{InfoNCE}(h, h_t) + \mathrm{InfoNCE}(h_v, h_t)` (paper) or
:math:`\mathrm{InfoNCE}(h_t, \bar r) + \mathrm{InfoNCE}(h_v, \bar r) + \mathrm{InfoNCE}(h_v, h_t)`
(``redu2``), symmetric, cosine / τ, τ = ``ssl_temperature`` = 0.1, λ = ``fusion_weight``, plus
DRAGON's L2 on the batch users' preferences and on w (``reg_weight``). The InfoNCE terms run
over the batch's items (``ssl_items: batch``) or every item (``all``, an I x I logit matrix per
term, whose gradient :func:`symmetric_info_nce` forms in the forward pass so that it never
outlives it: ``fused_infonce``).

One forward pass computes the fusion over the catalogue once per batch; the GCN branches
and the InfoNCE terms read the same outputs.

Sequence length. The public code feeds each modality vector to its transformers as a
sequence of one token, so every attention weight is 1 and cross-attention reduces to a
projection of the other modality plus the residual. ``fusion_tokens: 1`` does exactly that;
``fusion_tokens: k`` splits each ``fusion_dim`` vector into k tokens of ``fusion_dim / k``
so that attention has k keys to weigh.

Ablation switches (paper Table 2), ``fusion``:

- ``pid`` (default): [t ‖ s ‖ v'] with L_s + L_r;
- ``synergy``: [t ‖ s ‖ v] with L_s only (the public ``master`` branch);
- ``weighted``: [w_{u0} t ‖ w_{u1} v] users, [t ‖ v] items, no fusion module;
- ``concat``: [t ‖ v] for users and items;
- ``pooling``: ½(t + v) for users and items.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from recbole_mm.errors import ConfigError
from recbole_mm.model.dragon import DRAGON
from recbole_mm.model.loss import info_nce
from recbole_mm.options import FUSIONS


def orthogonal_residual(v, r, eps=1e-8):
    r"""Eq. 12: :math:`v - \frac{v^\top r}{\|r\|^2 + \epsilon} r` per row, (N x D) each.

    The projection is applied twice (classical Gram–Schmidt re-orthogonalisation) so that
    float32 rounding leaves :math:`|\langle v', r\rangle| / (\|v'\| \|r\|)` near 1e-7."""
    for _ in range(2):
        coefficient = (v * r).sum(-1, keepdim=True) / ((r * r).sum(-1, keepdim=True) + eps)
        v = v - coefficient * r
    return v


class TransformerBlock(nn.Module):
    r"""One MulT-style pre-LayerNorm transformer layer (dropouts 0):
    :math:`x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_a(x), \mathrm{LN}_a(c), \mathrm{LN}_a(c))`,
    :math:`x \leftarrow x + \mathrm{FFN}(\mathrm{LN}_f(x))` (ReLU, 4x), where the context c is
    another modality (cross-attention) or x itself (self-attention). As in MulT, the query and
    the context go through the *same* LayerNorm :math:`\mathrm{LN}_a` (one module), and the
    linear maps are Xavier-uniform with zero biases.

    Shapes: x (N x k_q x D), context (N x k_kv x D)."""

    def __init__(self, dim, heads=1):
        super().__init__()
        self.norm_attention = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        for linear in (self.attention.out_proj, self.ffn[0], self.ffn[2]):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x, context=None):
        query = self.norm_attention(x)
        keys = query if context is None else self.norm_attention(context)
        x = x + self.attend(query, keys)
        return x + self.ffn(self.norm_ffn(x))

    def attend(self, query, keys):
        """Multi-head attention; with a single key every attention weight is 1, so the output
        is the projected value alone, :math:`W_o (W_v c + b_v) + b_o`: the query/key
        projections are skipped (same result, same gradients: theirs are zero), and over more
        rows than the width the two maps are applied as one, :math:`(W_o W_v) c + (W_o b_v +
        b_o)` (one N x D x D product instead of two, for a D x D x D one)."""
        if keys.shape[1] > 1:
            return self.attention(query, keys, keys, need_weights=False)[0]
        dim = keys.shape[-1]
        value_weight, value_bias = self.attention.in_proj_weight[2 * dim:], self.attention.in_proj_bias[2 * dim:]
        out = self.attention.out_proj
        if keys.shape[0] > dim:
            values = F.linear(keys, out.weight @ value_weight, out.weight @ value_bias + out.bias)
        else:
            values = out(F.linear(keys, value_weight, value_bias))
        return values.expand(-1, query.shape[1], -1)


class MulTEncoder(nn.Module):
    r"""MulT's one-layer transformer encoder ("Trans" of Eq. 7–10):
    :math:`\mathrm{LN}(\mathrm{Block}(\sqrt{D}\,x, \sqrt{D}\,c))`, i.e. the inputs (and the
    context) scaled by :math:`\sqrt D` first, a :class:`TransformerBlock`, and a final
    LayerNorm after it. Two encoders in a row therefore put a LayerNorm *and* a √D rescaling
    between the blocks, so that the second block sees inputs of norm √D, like the first.

    Shapes: x (N x k_q x D), context (N x k_kv x D) or None -> (N x k_q x D)."""

    def __init__(self, dim, heads=1):
        super().__init__()
        self.scale = math.sqrt(dim)
        self.block = TransformerBlock(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, context=None):
        context = None if context is None else context * self.scale
        return self.norm(self.block(x * self.scale, context))


def to_tokens(x, n_tokens):
    """(N x D) -> (N x k x D/k)."""
    return x.reshape(x.shape[0], n_tokens, x.shape[1] // n_tokens)


class SynergyEncoder(nn.Module):
    r"""Cross-modal synergy estimation (Eq. 7–8): for each direction a cross-modal MulT encoder
    (query = one modality, keys/values = the other) followed by a self-attention MulT encoder:
    :math:`h_{v\to t} = \mathrm{Self}(\mathrm{Cross}(v, t))`, with
    :math:`\mathrm{Enc}(x, c) = \mathrm{LN}(\mathrm{Block}(\sqrt d\,x, \sqrt d\,c))`
    (:class:`MulTEncoder`, d = D/k the token width).

    ``forward(v, t)`` with (N x D) inputs returns :math:`h_{v\to t}, h_{t\to v}`, (N x D)."""

    def __init__(self, dim, n_tokens=1, heads=1):
        super().__init__()
        self.n_tokens = n_tokens
        token_dim = dim // n_tokens
        self.cross = nn.ModuleDict({"v_t": MulTEncoder(token_dim, heads), "t_v": MulTEncoder(token_dim, heads)})
        self.self_attention = nn.ModuleDict({"v_t": MulTEncoder(token_dim, heads),
                                             "t_v": MulTEncoder(token_dim, heads)})

    def direction(self, name, query, context):
        x = self.self_attention[name](self.cross[name](query, context))
        return x.reshape(x.shape[0], -1)

    def forward(self, v, t):
        v_tokens, t_tokens = to_tokens(v, self.n_tokens), to_tokens(t, self.n_tokens)
        return self.direction("v_t", v_tokens, t_tokens), self.direction("t_v", t_tokens, v_tokens)


class _SymmetricInfoNCE(torch.autograd.Function):
    """Symmetric InfoNCE of logits :math:`L = a b^\\top` whose gradient is formed in the forward
    pass; see :func:`symmetric_info_nce`."""

    @staticmethod
    def forward(ctx, a, b, with_gradient, chunk):
        n = a.shape[0]
        logits = a @ b.T
        diagonal = logits.diagonal().clone()
        row_lse = torch.empty(n, dtype=a.dtype, device=a.device)
        col_max = logits.max(dim=0).values
        col_sum = torch.zeros(n, dtype=a.dtype, device=a.device)
        for start in range(0, n, chunk):
            block = logits[start:start + chunk]
            row_lse[start:start + chunk] = torch.logsumexp(block, dim=1)
            col_sum += torch.exp(block - col_max).sum(dim=0)
        col_lse = col_max + torch.log(col_sum)
        loss = 0.5 * ((row_lse - diagonal).mean() + (col_lse - diagonal).mean())
        if with_gradient:
            # dloss/dL = (softmax over the row + softmax over the column) / 2n - I / n, in place
            for start in range(0, n, chunk):
                block = logits[start:start + chunk]
                row_part = torch.exp(block - row_lse[start:start + chunk, None])
                block.sub_(col_lse).exp_().add_(row_part)
            logits.mul_(0.5 / n)
            logits.diagonal().sub_(1.0 / n)
            ctx.save_for_backward(logits @ b, logits.T @ a)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_a, grad_b = ctx.saved_tensors
        return grad_output * grad_a, grad_output * grad_b, None, None


def symmetric_info_nce(anchor, positive, temperature, chunk=1024):
    r"""The symmetric InfoNCE of :func:`~recbole_mm.model.loss.info_nce` (same value, same
    gradients up to float rounding) at a fraction of its memory: the (N x N) logit matrix
    exists only inside the forward pass, where it is turned in place, ``chunk`` rows at a time,
    into :math:`\partial\mathcal L / \partial L` and multiplied out into the (N x D) gradients
    of both sides, which the backward pass merely scales. Autograd instead keeps the logits
    and both log-softmax outputs of every term until the backward pass (VLIF's four terms over
    the Sports catalogue, N = 18,357: about 16 GB). Three N x N x D products per term either
    way; the row/column log-sum-exps are formed chunk by chunk.

    Args:
        anchor, positive: (N x D), row i of one the positive of row i of the other.
    """
    a = F.normalize(anchor, dim=1) / temperature
    b = F.normalize(positive, dim=1)
    with_gradient = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    return _SymmetricInfoNCE.apply(a, b, with_gradient, chunk)


REDUNDANCY_VARIANTS = ("paper", "redu2")


class RedundancyEncoder(nn.Module):
    r"""Transformer-based redundancy estimation (Eq. 9–11), two orderings (``variant``):

    - ``paper`` (§2.3's text): the three inputs :math:`X = [v, t]`, :math:`X_v = [v,
      \mathrm{MASK}_t]`, :math:`X_t = [\mathrm{MASK}_v, t]` are sequences of 2k tokens
      (learnable mask tokens, initialised to zero); one shared MulT self-attention encoder F,
      then a projection g: flattened (2D) -> D, i.e. :math:`h = g(F(X))`.
    - ``redu2`` (the public code's ``redu2`` branch): the projection first, on the
      concatenations with *zero* masks, :math:`[t \| v]`, :math:`[0 \| v]`, :math:`[t \| 0]`,
      then the shared encoder on the resulting single D-wide vector (k tokens of D/k):
      :math:`h = F(g(X))`. Since :math:`g([t \| v]) = W_t t + W_v v + b`, the three
      projections are formed from :math:`W_t t` and :math:`W_v v`, computed once.

    Both return :math:`h, h_v, h_t`; ``anchored_on_mean`` says how :math:`\mathcal L_r` pairs
    them (see :meth:`VLIF.fusion_losses`): the paper's text pairs (h, h_v), (h, h_t), (h_v, h_t);
    ``redu2`` pairs (h_t, r̄), (h_v, r̄), (h_v, h_t) with :math:`\bar r = \tfrac13 (h + h_v + h_t)`.

    ``forward(v, t)`` with (N x D) inputs returns :math:`h, h_v, h_t`, (N x D) each."""

    def __init__(self, dim, n_tokens=1, heads=1, variant="paper"):
        super().__init__()
        if variant not in REDUNDANCY_VARIANTS:
            raise ConfigError(f"VLIF: redundancy_variant must be one of {REDUNDANCY_VARIANTS}, got {variant!r}")
        self.variant = variant
        self.anchored_on_mean = variant == "redu2"
        self.n_tokens = n_tokens
        self.dim = dim
        token_dim = dim // n_tokens
        if variant == "paper":
            self.mask_v = nn.Parameter(torch.zeros(n_tokens, token_dim))
            self.mask_t = nn.Parameter(torch.zeros(n_tokens, token_dim))
        self.encoder = MulTEncoder(token_dim, heads)
        self.projection = nn.Linear(2 * dim, dim)  # paper: (2D -> D) after F; redu2: on [t ‖ v] before F

    def forward(self, v, t):
        if self.variant == "redu2":
            return self.forward_project_first(v, t)
        n = v.shape[0]
        v_tokens, t_tokens = to_tokens(v, self.n_tokens), to_tokens(t, self.n_tokens)
        mask_v, mask_t = self.mask_v.expand(n, -1, -1), self.mask_t.expand(n, -1, -1)
        sequences = torch.cat([
            torch.cat([v_tokens, t_tokens], dim=1),
            torch.cat([v_tokens, mask_t], dim=1),
            torch.cat([mask_v, t_tokens], dim=1),
        ])
        encoded = self.encoder(sequences).reshape(3 * n, -1)
        return torch.split(self.projection(encoded), n)

    def forward_project_first(self, v, t):
        n = v.shape[0]
        weight, bias = self.projection.weight, self.projection.bias
        text_part = F.linear(t, weight[:, :self.dim])   # W_t t
        visual_part = F.linear(v, weight[:, self.dim:])  # W_v v
        projected = torch.cat([text_part + visual_part, visual_part, text_part]) + bias  # g([t‖v]), g([0‖v]), g([t‖0])
        encoded = self.encoder(to_tokens(projected, self.n_tokens)).reshape(3 * n, -1)
        return torch.split(encoded, n)


class VLIF(DRAGON):
    one_modality_refusal = (
        "its synergy (and redundancy) module fuses each item's image and text features (dangkh/VIRAL stops "
        "in CrossModal on a one-modality folder; its abl_1modal branches still read both files)")
    def __init__(self, config, dataset):
        self.fusion = config["fusion"]
        if self.fusion not in FUSIONS:
            raise ConfigError(f"VLIF: fusion must be one of {FUSIONS}, got {self.fusion!r}")
        self.n_tokens = int(config["fusion_tokens"])
        self.fusion_weight = config["fusion_weight"]
        self.ssl_temperature = config["ssl_temperature"]
        self.ssl_items = config["ssl_items"]
        self.fusion_checkpoint = bool(config["fusion_checkpoint"])
        self.redundancy_variant = config["redundancy_variant"] or "paper"
        self.log2_bpr = bool(config["log2_bpr"])
        self.fused_infonce = config["fused_infonce"] is not False
        if self.ssl_items not in ("batch", "all"):
            raise ConfigError(f"VLIF: ssl_items must be 'batch' or 'all', got {self.ssl_items!r}")
        self._fusion_outputs = {}
        super().__init__(config, dataset)
        if self.uses_fusion_module:
            self.build_fusion_module(config)
        if self.fusion in ("concat", "pooling"):
            self.user_modality_weight = None
        self.use_linear_branches(config["linear_branches"] or [])

    @property
    def uses_fusion_module(self):
        return self.fusion in ("pid", "synergy")

    def fusion_dim(self):
        return self.config["fusion_dim"] or self.modality_features["text"].shape[1]

    def branch_dims(self):
        """Branches in concatenation order: [t, s, v'] (pid), [t, s, v] (synergy), [t, v]."""
        text_dim, image_dim = self.modality_features["text"].shape[1], self.modality_features["image"].shape[1]
        if not self.uses_fusion_module:
            return {"text": text_dim, "image": image_dim}
        dim = self.fusion_dim()
        if dim % self.n_tokens:
            raise ConfigError(f"VLIF: fusion_dim {dim} is not divisible by fusion_tokens {self.n_tokens}")
        return {"text": dim, "synergy": dim, "image": dim if self.fusion == "pid" else image_dim}

    def use_linear_branches(self, names):
        """The public code's one-layer item MLP, ``Linear(dim -> d)`` + LeakyReLU, for the named
        branches instead of ``dim -> 4d -> d``: ``redu2`` builds its visual GCN with
        ``num_layer=1``, the only branch of the public code with one layer. ``master`` has none:
        its GCN always applies ``MLP_1(leaky_relu(MLP(x)))`` although its model sets
        ``num_layer = 1`` (``properties/vlif_master.yaml``: ``linear_branches: []``)."""
        unknown = set(names) - set(self.branches)
        if unknown:
            raise ConfigError(f"VLIF: linear_branches names {sorted(unknown)}; the branches are {list(self.branches)}")
        for name in names:
            first = self.branches[name].mlp[0]
            linear = nn.Linear(first.in_features, self.embedding_size).to(first.weight.device)
            self.branches[name].mlp = nn.Sequential(linear, nn.LeakyReLU())

    def build_fusion_module(self, config):
        dim, heads = self.fusion_dim(), config["fusion_heads"]
        self.input_projection = nn.ModuleDict({
            name: nn.Linear(features.shape[1], dim) if features.shape[1] != dim else nn.Identity()
            for name, features in self.modality_features.items() if name in ("image", "text")
        })
        self.synergy_encoder = SynergyEncoder(dim, self.n_tokens, heads)
        self.redundancy_encoder = (RedundancyEncoder(dim, self.n_tokens, heads, self.redundancy_variant)
                                   if self.fusion == "pid" else None)

    # ------------------------------------------------------------------ forward
    def branch_features(self):
        """Item features of each branch; keeps the fusion module's outputs for the loss."""
        v, t = self.modality_features["image"], self.modality_features["text"]
        if not self.uses_fusion_module:
            self._fusion_outputs = {}
            return {"text": t, "image": v}
        v_f, t_f = self.input_projection["image"](v), self.input_projection["text"](t)
        h_vt, h_tv = self.run_encoder(self.synergy_encoder, v_f, t_f)
        outputs = {"h_vt": h_vt, "h_tv": h_tv}
        features = {"text": t, "synergy": 0.5 * (h_vt + h_tv), "image": v}
        if self.fusion == "pid":
            h, h_v, h_t = self.run_encoder(self.redundancy_encoder, v_f, t_f)
            redundancy = (h + h_v + h_t) / 3.0
            unique_visual = F.normalize(orthogonal_residual(v_f, redundancy), dim=1)
            outputs.update(h=h, h_v=h_v, h_t=h_t, redundancy=redundancy, unique_visual=unique_visual)
            features.update(text=t_f, image=unique_visual)
        self._fusion_outputs = outputs
        return features

    def run_encoder(self, encoder, v, t):
        """A fusion encoder over every item; with ``fusion_checkpoint`` its activations are
        recomputed during the backward pass instead of kept (the same gradients, far less
        memory on large catalogues, about a third more compute)."""
        if self.fusion_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(encoder, v, t, use_reentrant=False)
        return encoder(v, t)

    def fuse(self, outputs):
        if self.fusion == "pooling":
            return (0.5 * (outputs["text"][0] + outputs["image"][0]), 0.5 * (outputs["text"][1] + outputs["image"][1]))
        if self.fusion == "concat":
            return (torch.cat([outputs["text"][0], outputs["image"][0]], dim=1),
                    torch.cat([outputs["text"][1], outputs["image"][1]], dim=1))
        return super().fuse(outputs)

    def add_homogeneous(self, users, items):
        """:math:`z_i = i_f + G^L i_f`, :math:`z_u = \\tfrac12 (u_f + U^L u_f)`."""
        user_part, item_part = self.homogeneous_parts(users, items)
        return 0.5 * (users + user_part), items + item_part

    # ------------------------------------------------------------------ loss
    def recommendation_loss(self, pos_scores, neg_scores):
        """BPR with the natural log (paper) or, with ``log2_bpr``, the public code's log₂."""
        if self.log2_bpr:
            return super().recommendation_loss(pos_scores, neg_scores)
        return self.bpr_loss(pos_scores, neg_scores)

    def fusion_losses(self, items):
        """dict name -> InfoNCE term over the given item ids (Eq. 15–16); empty without fusion.

        :math:`\\mathcal L_s = \\mathrm{NCE}(h_{v\\to t}, h_{t\\to v})`; :math:`\\mathcal L_r` =
        NCE(h, h_v) + NCE(h, h_t) + NCE(h_v, h_t) (paper), or NCE(h_t, r̄) + NCE(h_v, r̄) +
        NCE(h_v, h_t) anchored on :math:`\\bar r` (``redundancy_variant: redu2``)."""
        out = self._fusion_outputs
        if not out:
            return {}

        def nce(a, b):
            if self.fused_infonce:
                return symmetric_info_nce(out[a][items], out[b][items], self.ssl_temperature)
            return info_nce(out[a][items], out[b][items], self.ssl_temperature, symmetric=True)

        losses = {"synergy": nce("h_vt", "h_tv")}
        if self.fusion == "pid":
            anchor = ("redundancy", "redundancy") if self.redundancy_encoder.anchored_on_mean else ("h", "h")
            losses["redundancy"] = nce("h_t", anchor[0]) + nce("h_v", anchor[1]) + nce("h_v", "h_t")
        return losses

    def ssl_item_ids(self, interaction):
        if self.ssl_items == "all":
            return torch.arange(1, self.n_items, device=self.device)
        return torch.unique(torch.cat([interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]]))

    def auxiliary_loss(self, interaction):
        losses = self.fusion_losses(self.ssl_item_ids(interaction))
        return self.fusion_weight * sum(losses.values()) if losses else 0.0
