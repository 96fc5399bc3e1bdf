r"""MVGAE: multi-modal variational graph auto-encoder.

Yi & Chen, "Multi-modal Variational Graph Auto-encoder for Recommendation Systems", IEEE TMM
2021, as MMRec implements it (``src/models/mvgae.py`` of enoche/MMRec, from jing-1/MVGAE).

**Experts.** One Gaussian graph encoder per modality m (image, text) and one for the
collaborative signal c, whose item input is a free (I x d) table :math:`C` (MMRec's
``collaborative``). Encoder e's layer-0 nodes are
:math:`x^{(0)} = \mathrm{rownorm}([P_e ; \phi_e(F_e)])`, (U + I) x w: a (U x w) user preference
table :math:`P_e` stacked on the item input (:math:`F_m`, or :math:`C`) projected by a linear map
:math:`\phi_e` to w = ``feat_embed_dim`` (MMRec: 128). With the graph convolution

.. math::

    \mathrm{conv}(x) = \mathrm{dropout}_p\big(\mathrm{rownorm}(\hat A\, x W + b)\big),
    \qquad \hat A = D^{-1}(A + I)

(mean over each node and its neighbours in the bidirectional train graph, PyG's ``aggr='mean'``
with self-loops; p = ``dropout_rate``), LeakyReLU :math:`\sigma`, ``n_layers`` = L hidden layers

.. math::

    x^{(l+1)} &= \sigma\big(G^{(l)} \sigma(\mathrm{conv}^{(l)}(x^{(l)}))\big) \quad (d\text{-wide}) \\
    \mu_e &= G_\mu\, \sigma(\mathrm{conv}_\mu(x^{(L)})) + \sigma(S_\mu x^{(L)}) \\
    \log\sigma^2_e &= G_\sigma\, \sigma(\mathrm{conv}_\sigma(x^{(L)})) + \sigma(S_\sigma x^{(L)})

(G, S: d x d linear maps with bias), so every node gets a d-dimensional Gaussian per expert,
:math:`\mu_e, \log\sigma_e^2 \in \mathbb R^{(U+I) \times d}`.

**Fusion** by a product of Gaussian experts, precisions :math:`T = 1 / (\sigma^2 + \epsilon)`,
:math:`\epsilon = 10^{-8}`:

.. math::

    \mathrm{PoE}(\{\mu_k, \log\sigma^2_k\}) = \Big(\frac{\sum_k T_k \mu_k}{\sum_k T_k},\
        -\log \sum_k T_k\Big),

first over the modalities, then of that with the collaborative expert (MMRec's two stages; no
prior expert): :math:`(\mu, \log\sigma^2) = \mathrm{PoE}(\mathrm{PoE}(\text{image}, \text{text}), c)`.

**Loss.** For each of the fused Gaussian and every expert's own (image, text, c):
:math:`z = \mathrm{sigmoid}(\mu + 0.1\, \varepsilon\, e^{\frac12 \log\sigma^2})`,
:math:`\varepsilon \sim \mathcal N(0, I)` while training (the log-variance clamped at 10; the
0.1 scale is MMRec's), then

.. math::

    \mathcal L_{rec}(z) &= -\sum_{(u, i^+) \in B} \log_2 \mathrm{sigmoid}\big(
        \mathrm{sigmoid}(z_u^\top z_{i^+}) - \mathrm{sigmoid}(\max_{j \in B^-} z_u^\top z_j)\big) \\
    \mathcal{KL}(\mu, \log\sigma^2) &= -\tfrac12\, \mathrm{mean}_{\text{nodes}}
        \textstyle\sum_{k=1}^d \big(1 + \log\sigma^2 - \mu^2 - \sigma^2\big)_k
        \quad(\log\sigma^2 \text{ clamped at } 10)

summed over the four: :math:`\sum \mathcal L_{rec}(z) + \beta\, \mathcal{KL}(\mu, \log\sigma^2)`,
β = ``beta``. :math:`B^-` is the batch's sampled negatives, *all* of them for every user (MMRec's
``dot_product_decode_neg``: each user is scored against every negative of the batch and the
hardest one is kept). The sigmoid of z is MMRec's "regularisation for sparse data", its branch
for Amazon data, which MMRec hard-codes (``self.dataset = 'amazon'``): ``sigmoid_latent: True``
(default); ``False`` is the reference's other branch (raw z, raw means scored), dead in MMRec.

Beware, at MMRec's defaults: the dot product of two d-vectors of sigmoids is about d/4 = 16,
whose sigmoid is 1 to float precision for positive and negative alike, so the reconstruction
term sits at its plateau (1 per example and Gaussian) and passes (almost) no gradient: mostly the
KL trains, in MMRec as here. ``sigmoid_latent: False`` learns from the reconstruction term until
its raw dot products grow large enough to saturate the decoder's sigmoids in turn.

**Score** :math:`\mathrm{sigmoid}(\mu_u)^\top \mathrm{sigmoid}(\mu_i)` from the fused means:
deterministic (no sampling, no dropout), computed fresh once per evaluation by the base class's
cache. MMRec does not sample at evaluation either, but it scores with the ``result_embed`` left by
the last training batch (dropout on, one optimiser step stale).

**Executed path.** MMRec's defaults (``n_layers: 1``, ``concate = False``) leave dead code: the
second hidden layer (``n_layers > 1`` only: here every layer after the first is built alike, its
combining layer at PyTorch's default initialisation as MMRec's ``g_layer2``) and the hidden
layers' self-linears (computed, never used without ``concate``). The encoders here hold only what
runs. MMRec's ``n_layers: 0`` crashes (the heads are d-wide, the input w-wide): ``n_layers`` >= 1.

Reference bugs, as switches (default ``False`` = fixed):

- ``mvgae_frozen_quirk``: MMRec keeps the preference tables and the collaborative item table as
  plain tensors, never registered with the optimiser, so they stay at their random
  initialisation. ``True`` reproduces it (they become buffers); by default they are trained.
- ``mvgae_item_offset_quirk``: MMRec indexes the node matrix z with the raw item ids of the
  batch, which are **user** rows (items start at row U), so its reconstruction loss scores users
  against users. ``True`` reproduces it; by default items are rows U + i.
- ``mvgae_stale_eval_quirk``: MMRec ranks with ``result_embed``, the sigmoid of the fused means of
  the last training forward (dropout on, before that step's update); ``True`` keeps and ranks
  with them (:meth:`~recbole_mm.model.abstract_recommender.MultiModalRecommender.setup_stale_evaluation`);
  by default evaluation takes a fresh, dropout-free forward.

Other departures: message passing is a sparse product with :math:`D^{-1}(A + I)` (no PyG); with
``modalities`` given as one modality (MMRec's forward calls both the image and the text encoder
and stops without one) the first product has one expert. Initialisation as MMRec's:
Xavier-normal preferences, collaborative table, projections, conv weights, self-linears and
combining layers (but the later hidden ones); conv biases uniform in
:math:`\pm 1/\sqrt{\text{fan-in}}` (PyG's reset). With the same parameters, MMRec's code
(PyG 2.8) and this one, at n_layers 1 and 2, give the same fused means and log-variances, loss,
every gradient and evaluation scores to float rounding, under each switch value (the item-offset
fix checked by feeding MMRec offset ids), in evaluation mode and, from the same seed, in training
mode (the same dropout masks and draws, in the same order).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.data.graphs import interaction_edges, random_walk_adjacency
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import FrozenSparse, register_table

MAX_LOGVAR = 10.0  # log-variances are clamped at this value for sampling and the KL (MMRec's)
POE_EPS = 1e-8  # added to every expert's variance before inverting it (MMRec's)
SAMPLE_SCALE = 0.1  # MMRec samples mu + 0.1 * eps * sigma


def product_of_experts(mu, logvar, eps=POE_EPS):
    r"""Product of Gaussian experts: precision-weighted mean and the log of the summed precisions'
    inverse.

    Args:
        mu, logvar: (M x N x d) means and log-variances of M experts.

    Returns:
        (mu, logvar) of the product, each (N x d).
    """
    precision = 1.0 / (logvar.exp() + eps)
    total = precision.sum(dim=0)
    return (mu * precision).sum(dim=0) / total, -total.log()


def kl_divergence(mu, logvar):
    r""":math:`KL(\mathcal N(\mu, \sigma^2) \| \mathcal N(0, I))` summed over the d dimensions and
    averaged over the N rows, the log-variance clamped at :data:`MAX_LOGVAR`; (N x d) inputs."""
    logvar = logvar.clamp(max=MAX_LOGVAR)
    return -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(dim=1).mean()


def hardest_negative_loss(z, users, pos_nodes, neg_nodes):
    r"""MMRec's reconstruction loss on nodes z ((U + I) x d): every user against its positive and
    the batch's hardest negative, :math:`-\sum \log_2 \mathrm{sigmoid}(\mathrm{sigmoid}(s^+) -
    \mathrm{sigmoid}(\max_j s^-_j))`; (B,) node ids each."""
    user_rows = z[users]
    positive = torch.sigmoid((user_rows * z[pos_nodes]).sum(dim=-1))
    hardest = torch.sigmoid((user_rows @ z[neg_nodes].T).max(dim=1).values)
    return -F.logsigmoid(positive - hardest).sum() / math.log(2.0)


class MeanGraphConv(nn.Module):
    """MMRec's ``BaseModel`` with ``aggr='mean'``: ``dropout(rownorm(Â x W + b))``, Â the mean over
    each node and its neighbours."""

    def __init__(self, size_in, size_out, dropout):
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(size_in, size_out)))
        bound = size_in ** -0.5  # PyG's uniform(in_channels, bias)
        self.bias = nn.Parameter(torch.empty(size_out).uniform_(-bound, bound))
        self.dropout = dropout

    def forward(self, adjacency, x):
        h = F.normalize(adjacency.mm(x @ self.weight) + self.bias, dim=-1)
        return F.dropout(h, self.dropout, self.training)


def _xavier_linear(size_in, size_out):
    linear = nn.Linear(size_in, size_out)
    nn.init.xavier_normal_(linear.weight)
    return linear


class GaussianHead(nn.Module):
    """One output of an expert (its mean or its log-variance): ``G σ(conv(x)) + σ(S x)``."""

    def __init__(self, dim, dropout):
        super().__init__()
        self.conv = MeanGraphConv(dim, dim, dropout)
        self.self_linear = _xavier_linear(dim, dim)
        self.combine = _xavier_linear(dim, dim)

    def forward(self, adjacency, x):
        return self.combine(F.leaky_relu(self.conv(adjacency, x))) + F.leaky_relu(self.self_linear(x))


class GaussianGraphEncoder(nn.Module):
    """One expert of MVGAE (MMRec's ``GCN``): node means and log-variances, each (U + I) x d.

    Args:
        n_users: U.
        input_dim: width of the item input (the modality's features, or the collaborative table).
        latent_dim: w, width of the projected input and of the preferences.
        embedding_dim: d.
        n_layers: hidden layers L >= 1.
        dropout: dropout of every convolution's output.
        trainable_preference: ``False`` keeps the preference table at its initialisation.
    """

    def __init__(self, n_users, input_dim, latent_dim, embedding_dim, n_layers, dropout, trainable_preference=True):
        super().__init__()
        self.projection = _xavier_linear(input_dim, latent_dim)
        register_table(self, "preference", nn.init.xavier_normal_(torch.empty(n_users, latent_dim)),
                       trainable_preference)
        self.convs = nn.ModuleList(
            MeanGraphConv(latent_dim if layer == 0 else embedding_dim, embedding_dim, dropout)
            for layer in range(n_layers))
        # MMRec re-initialises g_layer1 only; its g_layer2 keeps PyTorch's default
        self.combines = nn.ModuleList(
            _xavier_linear(embedding_dim, embedding_dim) if layer == 0 else nn.Linear(embedding_dim, embedding_dim)
            for layer in range(n_layers))
        self.mu_head = GaussianHead(embedding_dim, dropout)
        self.logvar_head = GaussianHead(embedding_dim, dropout)

    def forward(self, adjacency, item_input):
        x = F.normalize(torch.cat([self.preference, self.projection(item_input)], dim=0), dim=1)
        for conv, combine in zip(self.convs, self.combines):
            x = F.leaky_relu(combine(F.leaky_relu(conv(adjacency, x))))
        return self.mu_head(adjacency, x), self.logvar_head(adjacency, x)


class MVGAE(MultiModalRecommender):
    one_modality_refusal = (
        "MMRec's forward runs the image and the text encoders unconditionally (on a one-modality folder "
        "it stops with an AttributeError); modalities: [image] or [text], given, runs this port's "
        "one-modality product of experts, which has no reference counterpart")
    loss_reduction = "sum"  # MMRec's reconstruction loss sums over the batch's users

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        self.n_layers = config["n_layers"]
        if not isinstance(self.n_layers, int) or self.n_layers < 1:
            raise ConfigError(f"MVGAE: n_layers must be a positive integer, got {self.n_layers!r} "
                             "(MMRec's n_layers: 0 stops on a shape mismatch)")
        self.beta = config["beta"]
        self.frozen_quirk = bool(config["mvgae_frozen_quirk"])
        self.item_offset_quirk = bool(config["mvgae_item_offset_quirk"])
        self.sigmoid_latent = bool(config["sigmoid_latent"])
        self.setup_stale_evaluation(config["mvgae_stale_eval_quirk"], self.embedding_size, self.embedding_size)
        del self.bpr_loss  # MMRec's own loss (hardest batch negative, log2): denoise cannot replace it

        users, items = interaction_edges(self.interaction_matrix)
        self.adjacency = FrozenSparse(random_walk_adjacency(
            users.to(self.device), items.to(self.device), self.n_users, self.n_items))

        d, width, dropout = self.embedding_size, config["feat_embed_dim"], config["dropout_rate"]
        trainable = not self.frozen_quirk
        register_table(self, "collaborative", nn.init.xavier_normal_(torch.empty(self.n_items, d)), trainable)
        self.modality_encoders = nn.ModuleDict({
            name: GaussianGraphEncoder(self.n_users, features.shape[1], width, d, self.n_layers, dropout, trainable)
            for name, features in self.modality_features.items()
        })
        self.collaborative_encoder = GaussianGraphEncoder(self.n_users, d, width, d, self.n_layers, dropout, trainable)

    def encode(self):
        """The fused Gaussian and the experts' own: ``(mu, logvar), [(mu, logvar) per modality...,
        (mu, logvar) of the collaborative expert]``, each (U + I) x d."""
        experts = [encoder(self.adjacency, self.modality_features[name])
                   for name, encoder in self.modality_encoders.items()]
        experts.append(self.collaborative_encoder(self.adjacency, self.collaborative))
        modal_mu, modal_logvar = product_of_experts(torch.stack([mu for mu, _ in experts[:-1]]),
                                                    torch.stack([logvar for _, logvar in experts[:-1]]))
        collaborative_mu, collaborative_logvar = experts[-1]
        fused = product_of_experts(torch.stack([modal_mu, collaborative_mu]),
                                   torch.stack([modal_logvar, collaborative_logvar]))
        return fused, experts

    def reparameterise(self, mu, logvar):
        """A draw :math:`\\mu + 0.1\\,\\varepsilon\\,\\sigma` while training, the mean otherwise."""
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * SAMPLE_SCALE * (0.5 * logvar.clamp(max=MAX_LOGVAR)).exp()

    def scored_nodes(self, mu):
        """The users' and items' scored rows from the fused means: (U x d), (I x d)."""
        nodes = torch.sigmoid(mu) if self.sigmoid_latent else mu
        return torch.split(nodes, [self.n_users, self.n_items])

    def forward(self):
        (mu, _), _ = self.encode()
        return self.scored_nodes(mu)

    def calculate_loss(self, interaction):
        fused, experts = self.encode()
        self.remember_representations(*self.scored_nodes(fused[0]))
        users = interaction[self.USER_ID]
        offset = 0 if self.item_offset_quirk else self.n_users
        pos_nodes, neg_nodes = interaction[self.ITEM_ID] + offset, interaction[self.NEG_ITEM_ID] + offset
        loss = 0.0
        for mu, logvar in [fused] + experts:
            z = self.reparameterise(mu, logvar)
            z = torch.sigmoid(z) if self.sigmoid_latent else z
            loss = loss + hardest_negative_loss(z, users, pos_nodes, neg_nodes) + self.beta * kl_divergence(mu, logvar)
        return loss
