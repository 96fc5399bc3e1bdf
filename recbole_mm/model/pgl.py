r"""PGL: principal graph learning for multimedia recommendation.

Yu et al., "Mind Individual Information! Principal Graph Learning for Multimedia
Recommendation", AAAI 2025, as MMRec implements it (``src/models/pgl.py`` of enoche/MMRec,
contributed by the authors; author repository demonph10/PGL).

- **Items from content only**: :math:`x_i = [\mathrm{rownorm}(W_v v_i); \mathrm{rownorm}(W_t t_i)]`
  from trainable copies of the raw features (MMRec fine-tunes them); users are a free
  :math:`[E^{img}_u; E^{txt}_u]` table of the same width (``embedding_size`` = ``feat_embed_dim``).
- **Item graph**: the frozen kNN graph of FREEDOM (``knn_k``, ``mm_image_weight``), applied
  ``n_mm_layers`` times to the item rows: :math:`h = G^{L_{mm}} X`.
- **User–item graph**: LightGCN (mean of layers 0..``n_ui_layers``) on the *principal
  subgraph* while training and on the full normalised graph for evaluation; items add h.
  The principal subgraph (``mode``):

  - ``local`` (MMRec's default): each epoch keeps ``subgraph_keep`` (0.3) of the train edges
    drawn degree-sensitively (:math:`\propto 1/\sqrt{d_u d_i}`, FREEDOM's sampler), re-normalised;
  - ``global``: a fixed low-rank graph from the singular triplets of :math:`\hat A`
    (:func:`~recbole_mm.data.graphs.principal_subgraph`; MMRec: the ``sparsesvd`` package and a
    dense N x N product).

- **Loss**: mean BPR + ``reg_weight`` · ½ [InfoNCE(drop(u), drop(u)) + InfoNCE(drop(i⁺), drop(i⁺))],
  each InfoNCE between two dropout (``dropout``) views of the batch rows, τ = 0.2, in-batch
  negatives (MMRec's ``reg_weight`` default 0 leaves it off).
"""
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.data.graphs import principal_subgraph
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import FrozenSparse, propagate
from recbole_mm.model.loss import info_nce
from recbole_mm.options import PGL_MODES


class PGL(MultiModalRecommender):
    one_modality_refusal = (
        "MMRec's PGL normalises and concatenates the image and the text projections unconditionally "
        "(on a one-modality folder its forward stops with an UnboundLocalError)")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        if sorted(self.modality_features) != ["image", "text"]:
            raise ConfigError(f"PGL needs 'image' and 'text' modalities, got {list(self.modality_features)}")
        if config["embedding_size"] != config["feat_embed_dim"]:
            raise ConfigError("PGL concatenates user and item rows of one width: embedding_size must equal "
                              f"feat_embed_dim, got {config['embedding_size']} and {config['feat_embed_dim']}")
        self.n_ui_layers = config["n_ui_layers"]
        self.n_mm_layers = config["n_mm_layers"]
        self.reg_weight = config["reg_weight"]
        self.dropout = config["dropout"]
        self.mode = config["mode"]
        d = self.embedding_size
        self.user_image = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.user_text = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.features = self.feature_parameters(trainable=True)
        self.projections = nn.ModuleDict({name: nn.Linear(self.features[name].shape[1], config["feat_embed_dim"])
                                          for name in ("image", "text")})
        image_weight = config["mm_image_weight"]
        self.item_graph = self.item_knn_graph(config["knn_k"], {"image": image_weight, "text": 1.0 - image_weight})
        if self.mode == "local":
            keep = config["subgraph_keep"]
            if not 0.0 < keep <= 1.0:
                raise ConfigError(f"subgraph_keep must lie in (0, 1], got {keep}")
            self.setup_edge_pruning(1.0 - keep)
        else:
            self.setup_edge_pruning(0.0)
            self.train_adjacency = FrozenSparse(self.global_principal_subgraph(), symmetric=True)

    def global_principal_subgraph(self):
        """``mode: global``: the low-rank principal subgraph of the full normalised graph, rank
        ``embedding_size`` (MMRec's), (U + I) x (U + I) sparse."""
        full = self.normalized_adjacency().cpu()
        indices = full.indices().numpy()
        scipy_graph = sp.csr_matrix((full.values().numpy(), (indices[0], indices[1])), shape=tuple(full.shape))
        return principal_subgraph(scipy_graph, self.embedding_size).to(self.device)

    def pre_epoch_processing(self):
        """``mode: local``: this epoch's degree-sensitive subgraph (``global``: fixed)."""
        self.resample_edges()

    def item_rows(self):
        """(I x 2d) :math:`[\\mathrm{rownorm}(W_v v); \\mathrm{rownorm}(W_t t)]`."""
        return torch.cat([F.normalize(self.projections[name](self.features[name]), dim=1) for name in ("image", "text")],
                         dim=1)

    def forward(self):
        items = self.item_rows()
        item_graph_part = propagate(self.item_graph, items, self.n_mm_layers, combine="last")
        ego = torch.cat([torch.cat([self.user_image, self.user_text], dim=1), items], dim=0)
        nodes = propagate(self.user_item_adjacency(), ego, self.n_ui_layers, combine="mean")
        users, items = torch.split(nodes, [self.n_users, self.n_items])
        return users, items + item_graph_part

    def calculate_loss(self, interaction):
        user_all, item_all = self.forward()
        loss, user_e = self.bpr_on_batch(interaction, user_all, item_all)
        if self.reg_weight:
            pos_e = item_all[interaction[self.ITEM_ID]]
            views = [F.dropout(rows, self.dropout, self.training) for rows in (user_e, user_e, pos_e, pos_e)]
            loss = loss + self.reg_weight * 0.5 * (info_nce(views[0], views[1], 0.2) + info_nce(views[2], views[3], 0.2))
        return loss
