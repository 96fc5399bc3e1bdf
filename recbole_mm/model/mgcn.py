r"""MGCN: multi-view graph convolutional network for multimedia recommendation.

Yu et al., ACM MM 2023, as MMRec implements it (``src/models/mgcn.py`` of enoche/MMRec). For each modality m (``modalities``, image and text by default) with raw features
:math:`x_m` (a trainable copy, as in MMRec: ``trainable_features``):

- **Behaviour-guided purifier**: :math:`\tilde e_{m,i} = e_i \odot \sigma(W_m (P_m x_{m,i}) + b_m)`,
  the item ID embedding gated by a linear projection :math:`P_m` (raw -> d) of the features.
- **User–item view**: LightGCN on the symmetric :math:`\hat A` (no self loops), mean of layers
  0..``n_ui_layers``: :math:`E_c` ("content", users and items).
- **Item–item view**: a frozen kNN graph :math:`S_m` per modality from the raw features
  (``knn_k`` = 10, cosine similarities kept as edge weights, symmetric normalisation by the
  weighted row degree; built once and cached), ``n_layers`` steps on the purified items:
  :math:`E_{m,I} = S_m^{L} \tilde e_m`; users :math:`E_{m,U} = R\, E_{m,I}`, with R the user–item
  block of :math:`\hat A`.
- **Behaviour-aware fuser**: :math:`\alpha = \mathrm{softmax}_m(q(E_m))` with one query
  :math:`q = \mathrm{Lin}_{d\to1}^{\text{no bias}} \circ \tanh \circ \mathrm{Lin}_{d\to d}` shared
  by the modalities; common :math:`C = \sum_m \alpha_m E_m`; specific
  :math:`S'_m = (E_m - C) \odot \sigma(\mathrm{Lin}_m(E_c))`; side
  :math:`E_s = (\sum_m S'_m + C) / (M + 1)` (MMRec's ``/ 3`` for two modalities).
- **Representations**: :math:`E = E_c + E_s` for users and items; score :math:`e_u^\top e_i`.
- **Loss**: :math:`\mathrm{BPR}(u, i^+, i^-) + \lambda \cdot \tfrac12(\lVert e_u\rVert^2 +
  \lVert e_{i^+}\rVert^2 + \lVert e_{i^-}\rVert^2) / B + \lambda_{cl} [\mathrm{InfoNCE}(E_{s}[i^+],
  E_c[i^+]) + \mathrm{InfoNCE}(E_s[u], E_c[u])]`: the squared norms are summed over the batch's
  final representations, λ = ``reg_weight`` (1e-4); the InfoNCE is in-batch (every row of the
  batch, duplicates included, is a negative of the others) with τ = 0.2 (MMRec's ``tau = 0.5``
  field is unused), λ_cl = ``cl_loss``.

Where this differs from MMRec: the L2 term is divided by the rows of the batch, where MMRec
divides by the configured ``train_batch_size`` (the two differ on an epoch's last, shorter
batch only); the BPR is RecBole's ``BPRLoss`` (``1e-10`` inside the log) so that the denoising
losses can replace it. The kNN graphs leave RecBole's padding item 0 out.
"""
import torch
import torch.nn as nn

from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import propagate
from recbole_mm.model.loss import info_nce

CL_TEMPERATURE = 0.2


def _gate(dim):
    """``Linear(d -> d)`` followed by a sigmoid."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())


class MGCN(MultiModalRecommender):
    one_modality_refusal = (
        "MMRec's forward gates and fuses the image and the text views unconditionally (on a one-modality "
        "folder it stops with an UnboundLocalError); modalities: [image] or [text], given, runs this port's "
        "one-view generalisation, which has no reference counterpart")
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        d = self.embedding_size
        self.n_ui_layers = config["n_ui_layers"]
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.cl_weight = config["cl_loss"]
        for key in ("n_ui_layers", "n_layers"):
            if not isinstance(config[key], int) or config[key] < 0:
                raise ConfigError(f"{type(self).__name__}: {key} must be a non-negative integer, got {config[key]!r}")
        self.modality_names = list(self.modality_features)

        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.features = self.feature_parameters(config["trainable_features"])
        self.projections = nn.ModuleDict({
            name: nn.Linear(features.shape[1], d) for name, features in self.modality_features.items()
        })
        self.adjacency = self.normalized_adjacency()
        self.user_item_block = self._user_item_block(self.adjacency)
        self.setup_views(config)

    def setup_views(self, config):
        """The modules and graphs of :meth:`views` (SMORE, a subclass, has its own)."""
        d = self.embedding_size
        self.purifier_gates = nn.ModuleDict({name: _gate(d) for name in self.modality_names})
        self.preference_gates = nn.ModuleDict({name: _gate(d) for name in self.modality_names})
        self.query = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.item_graphs = {
            name: self.item_knn_graph(config["knn_k"], {name: 1.0}, weighted=True) for name in self.modality_names
        }

    def _user_item_block(self, adjacency):
        """R: the (U x I) user–item block of the normalised adjacency, sparse."""
        rows, cols = adjacency.indices()
        upper = (rows < self.n_users) & (cols >= self.n_users)
        indices = torch.stack([rows[upper], cols[upper] - self.n_users])
        return torch.sparse_coo_tensor(indices, adjacency.values()[upper], (self.n_users, self.n_items)).coalesce()

    def views(self):
        """The model's parts over all nodes (users first, then items), each (U + I) x d:
        (final E = E_c + E_s, side E_s, content E_c)."""
        content = propagate(self.adjacency, torch.cat([self.user_embedding, self.item_id_embedding]),
                            self.n_ui_layers, combine="mean")
        modal = []
        for name in self.modality_names:
            gate = self.purifier_gates[name](self.projections[name](self.features[name]))
            items = propagate(self.item_graphs[name], self.item_id_embedding * gate, self.n_layers, combine="last")
            users = torch.sparse.mm(self.user_item_block, items)
            modal.append(torch.cat([users, items]))
        stacked = torch.stack(modal, dim=1)                                  # (N, M, d)
        attention = torch.softmax(self.query(stacked).squeeze(-1), dim=1)    # (N, M)
        common = (attention.unsqueeze(-1) * stacked).sum(dim=1)
        specific = [(embeddings - common) * self.preference_gates[name](content)
                    for name, embeddings in zip(self.modality_names, modal)]
        side = (torch.stack(specific).sum(dim=0) + common) / (len(modal) + 1)
        return content + side, side, content

    def forward(self):
        """(users (U x d), items (I x d)): E = E_c + E_s."""
        final, _, _ = self.views()
        return torch.split(final, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        users, positives, negatives = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                                       interaction[self.NEG_ITEM_ID])
        final, side, content = self.views()
        user_all, item_all = torch.split(final, [self.n_users, self.n_items])
        loss, user_e = self.bpr_on_batch(interaction, user_all, item_all)
        if self.reg_weight:
            squares = user_e.pow(2).sum() + item_all[positives].pow(2).sum() + item_all[negatives].pow(2).sum()
            loss = loss + self.reg_weight * 0.5 * squares / len(users)
        if self.cl_weight:
            side_items, side_users = side[self.n_users + positives], side[users]
            loss = loss + self.cl_weight * (
                info_nce(side_items, content[self.n_users + positives], CL_TEMPERATURE)
                + info_nce(side_users, content[users], CL_TEMPERATURE)
            )
        return loss
