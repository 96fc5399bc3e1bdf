r"""MICRO: latent structure mining with contrastive modality fusion for multimedia
recommendation.

Zhang et al., IEEE TKDE 2022, as the authors' code implements it (CRIPAC-DIG/MICRO,
``codes/Models.py`` and ``codes/main.py``; not part of MMRec). MICRO is LATTICE
(:mod:`recbole_mm.model.lattice`, which this class extends) with one item graph per modality
and a contrastive fusion:

- **Item graphs**, per modality m: :math:`G_m = (1 - \lambda_c) S_m + \lambda_c \tilde S_m`,
  with :math:`S_m` the learned kNN graph of :math:`X_m W_m` and :math:`\tilde S_m` the original
  kNN graph of the raw :math:`X_m` (k = ``knn_k``, cosine weights, each normalised
  :math:`D^{-1/2} S D^{-1/2}` on its own; no modality mixing weight). Same refresh schedule as
  LATTICE: rebuilt with gradient on the first batch of an epoch, detached for the others,
  rebuilt for every evaluation.
- **Modality-specific items** :math:`h_m = G_m^{L} E_{item}` (``n_layers`` = 1) and their
  **fusion** :math:`h = \sum_m \alpha_{im} h_m`, :math:`\alpha_{i\cdot} =
  \mathrm{softmax}_m(q(h_{m,i}))`, :math:`q(x) = w^\top \tanh(W x + b)` (one query network
  shared by the modalities; ``Linear(d, d) -> Tanh -> Linear(d, 1, no bias)``).
- **Representations**: users = CF users, items = CF items + :math:`h / \|h\|_2` (LightGCN on
  :math:`D^{-1}(A + I)` as in LATTICE).
- **Loss**: LATTICE's BPR + λ L2 (λ = ``reg_weight``) plus
  :math:`\beta \sum_m \mathcal L_{c}(h_m, h)` with :math:`\mathcal L_c` GRACE's contrastive loss
  over **all** items (every other item of both views is a negative;
  :func:`~recbole_mm.model.loss.grace_info_nce`), temperature τ = ``cl_temperature`` = 0.5
  (hard-coded by the authors), β = ``cl_weight`` = 0.03 (their ``loss_ratio``). The authors
  include every item row; here the padding item 0 is left out. The anchors are taken 4096 at
  a time as the authors do, with checkpointing so that memory stays one chunk x items.

Value for value and gradient for gradient this is the authors' model (``tests/test_micro.py``).
Their *trainer* batches differently from RecBole (this is no model switch): each batch is
``train_batch_size`` distinct users drawn uniformly, one random train positive and one uniform
negative each, ``n_train // batch + 1`` batches per epoch (``load_data.py`` ``sample``,
``main.py``), while RecBole shuffles the train rows (ceil(n_train / batch) batches, the last one
partial). Every user thus gets the same number of pairs per epoch there, and a light user's
embedding takes larger Adam steps, so their runs learn faster (LightGCN-BPR alone on the
bundled synthetic data, lr 5e-4, one seed: about +5% valid Recall@20 after 100 epochs).
"""
import torch
import torch.nn as nn

from recbole_mm.data.graphs import combine_graphs, learned_item_graph
from recbole_mm.errors import ConfigError
from recbole_mm.model.lattice import LATTICE
from recbole_mm.model.loss import grace_info_nce


class MICRO(LATTICE):
    one_modality_refusal = (
        "CRIPAC-DIG/MICRO loads image_feat.npy and text_feat.npy unconditionally and contrasts each modality "
        "with their fusion; modalities: [image] or [text], given, runs this port's one-modality "
        "generalisation, which has no reference counterpart")
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.cl_weight = config["cl_weight"]
        self.cl_temperature = config["cl_temperature"]
        if self.cl_temperature <= 0:
            raise ConfigError(f"cl_temperature must be positive, got {self.cl_temperature}")

    def build_fusion(self):
        """The attention query network shared by the modalities (no global modality weight)."""
        d = self.embedding_size
        self.query = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

    def build_item_graphs(self):
        r"""One graph :math:`G_m` per modality, in ``modalities`` order, with gradient.

        Returns:
            list of sparse (n_items x n_items) tensors.
        """
        graphs = []
        for name, projected in self.projected_features().items():
            learned = learned_item_graph([projected], self.knn_k, None, self.knn_chunk_elements)
            graphs.append(combine_graphs([learned, self.original_graphs[name]],
                                         [1.0 - self.lambda_coeff, self.lambda_coeff]))
        return graphs

    def fusion_weights(self, modality_items):
        r"""Per-item attention over modalities, :math:`\mathrm{softmax}_m(q(h_{m,i}))`: (I x M)."""
        scores = torch.cat([self.query(items) for items in modality_items], dim=1)
        return torch.softmax(scores, dim=1)

    def item_structure(self, graphs):
        """Fused h (I x d) and the modality-specific item representations [(I x d)] per modality."""
        modality_items = [self.propagate_items(graph) for graph in graphs]
        weights = self.fusion_weights(modality_items)
        fused = sum(weights[:, m:m + 1] * items for m, items in enumerate(modality_items))
        return fused, modality_items

    def auxiliary_loss(self, h, parts):
        r""":math:`\beta \sum_m \mathcal L_c(h_m, h)` over the real items (padding row left out)."""
        if not self.cl_weight:
            return 0.0
        loss = sum(grace_info_nce(items[1:], h[1:], self.cl_temperature) for items in parts)
        return self.cl_weight * loss
