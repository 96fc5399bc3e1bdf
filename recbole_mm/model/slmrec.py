r"""SLMRec: self-supervised learning for multimedia recommendation.

Tao et al., IEEE TMM 2022, as MMRec ports it (``src/models/slmrec.py`` and
``src/configs/model/SLMRec.yaml`` of enoche/MMRec): the "FAC" (fine and coarse) task, on image
and text features (MMRec has no audio).

- **Branches.** One LightGCN per branch b ∈ {ID, m_1, m_2} (``modalities``, image then text by
  default) on the symmetric :math:`\hat A` (MMRec's ``adj_type: pre``, no self loops), mean of
  layers 0..L (``n_layers`` = 3). All branches share the user table :math:`E_U` (U x d); the
  item side is the ID table :math:`E_I` (I x d) or a modality's projection
  :math:`W_m \bar x_m + b_m` (I x d) of the row-normalised, frozen raw features
  :math:`\bar x_m` (I x d_m):
  :math:`[h^b_U; h^b_I] = \mathrm{LGN}([E_U; E^b_I])`.
- **Fusion.** Concatenate the branches (U x (1+M)d, I x (1+M)d) and apply separate linear
  heads: :math:`z_U = F_U [h^{ID}_U \| h^{m_1}_U \| h^{m_2}_U]`,
  :math:`z_I = F_I [h^{ID}_I \| h^{m_1}_I \| h^{m_2}_I]` (d each). Scores :math:`z_u^\top z_i`.
- **Main loss.** In-batch InfoNCE over the batch's (u, i) pairs on L2-normalised rows,
  τ = ``cl_temperature`` = 0.2 (:func:`~recbole_mm.model.loss.info_nce`): the other positives
  of the batch are the negatives (a repeated item counts as a negative of its other users, as in
  MMRec). No sampled negatives are used, so the class trains on positive pairs only (see below).
- **FAC** (over the batch's positive items, on the branch outputs before fusion, **not**
  normalised; :func:`~recbole_mm.model.loss.info_nce` with ``normalize=False``, τ = ``ssl_temperature``):

  .. math:: x^{iv} = g_{i}(h^{ID}_i),\quad \mathcal L_v = \mathrm{NCE}(x^{iv}, g_{v}(h^{m_1}_i))

  .. math:: \mathcal L_t = \mathrm{NCE}(g_{ivat}(g_{iva}(x^{iv})), g_{t}(h^{m_2}_i))

  with :math:`g_i, g_v, g_{iva}`: d -> d and :math:`g_{ivat}, g_t`: d -> d/2 linear heads
  (Xavier-uniform weights). :math:`g_{iva}` is the audio step of the paper's ID -> visual ->
  audio -> text chain: MMRec keeps it in the chain but has no audio term (and its audio head
  ``g_a_iva`` receives no gradient, so it is left out here). With a single modality (MMRec's
  ``kwai`` branch) only :math:`\mathcal L_v` is used.
- **Total.** :math:`\mathcal L = \mathcal L_{main} + \alpha (\mathcal L_v + \mathcal L_t)`,
  α = ``ssl_weight`` (MMRec's ``ssl_alpha``); Adam with ``weight_decay`` 1e-4 (SLMRec.yaml).

**Positive-only batches.** ``input_type = POINTWISE`` and ``use_neg_sampling = False`` with
``train_neg_sample_args: ~`` in the yaml, as BM3 (MMRec draws a negative per row and never reads
it). There is no BPR, so ``denoise: tce | rce | bod | wbpr`` raise a clear error.

Reference behaviour and switches:

- **Prediction.** MMRec returns :math:`\sigma(z_u^\top z_i)`; the sigmoid is strictly increasing,
  so the ranking (every metric) equals that of the dot product returned here.
- **Stale evaluation embeddings** (``slmrec_stale_eval_quirk``, default False). MMRec ranks with
  the (z_U, z_I) left from the last training step, computed before that step's optimiser update.
  Default: a fresh :meth:`forward` per evaluation (the base class's cache). True: the last
  training forward's outputs are kept (detached, in buffers, so a saved checkpoint carries the
  representation that was evaluated at its epoch) and evaluation scores with them; before any
  training step the fresh forward is used.
- **``config["data.input.dataset"]``** is not a key of MMRec's config, whose ``__getitem__``
  returns None for it. Only the FD / FM tasks read it: ``None != "kwai"`` takes the three-modality
  branch, which reads the audio projections that are never created, so FD / FM end in an
  AttributeError on every dataset. FAC and the fusion read ``config["dataset"]`` (the kwai branch
  only for a dataset named ``kwai``), so the key changes nothing that runs: no switch. Here the
  kwai branch is chosen by the number of modalities instead of the dataset's name.
- **``ssl_task``**: only ``FAC`` (the other tasks cannot run in the reference, see above); FD, FM
  and FD+FM raise a ConfigError.
- Fixed in MMRec's yaml and not configurable here: ``mm_fusion_mode: concat`` (``mean`` would
  crash there: the heads keep the concat width), ``init: xavier`` (``normal`` names a missing
  table), ``adj_type: pre``. ``reg`` is in MMRec's grid but never read: not in ours.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import InputType

from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import FrozenSparse, propagate
from recbole_mm.model.loss import info_nce
from recbole_mm.options import SSL_TASKS


def xavier_linear(in_features, out_features):
    """``nn.Linear`` with a Xavier-uniform weight (the bias keeps torch's default), as MMRec."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    return layer


class SLMRec(MultiModalRecommender):
    # MMRec's one-modality path is its kwai branch (ID + visual, chosen by the dataset's name): it
    # runs with the visual file alone, and so with text features given as that file; here one
    # modality, image or text, takes that branch whatever the dataset's name
    one_modality_ok = True
    input_type = InputType.POINTWISE
    use_neg_sampling = False  # see recbole_mm.config.Config._set_train_neg_sample_args

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        if len(self.modality_features) not in (1, 2):
            raise ConfigError(f"SLMRec: FAC chains the ID branch to one or two modalities (image, text), "
                              f"got modalities {list(self.modality_features)}")
        ssl_task = config["ssl_task"]
        if ssl_task not in SSL_TASKS:
            raise ConfigError(f"SLMRec: ssl_task must be FAC, got {ssl_task!r} (MMRec's FD / FM read an audio "
                              "table it never creates)")
        d = self.embedding_size
        if d < 2:
            raise ConfigError(f"SLMRec: embedding_size must be at least 2 (the text head has d/2 outputs), got {d}")
        self.n_layers = config["n_layers"]
        self.cl_temperature = config["cl_temperature"]
        self.ssl_temperature = config["ssl_temperature"]
        self.ssl_weight = config["ssl_weight"]
        self.stale_eval_quirk = bool(config["slmrec_stale_eval_quirk"])

        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        # MMRec row-normalises the raw tables once and keeps them frozen. W (x / |x|) + b = (W x) / |x| + b:
        # only the inverse row norms are kept, not a normalised copy of every table (I x d_m each)
        self.inverse_feature_norms = {name: 1.0 / matrix.norm(dim=1).clamp_min(1e-12)
                                      for name, matrix in self.modality_features.items()}
        self.projections = nn.ModuleDict(
            {name: xavier_linear(matrix.shape[1], d) for name, matrix in self.modality_features.items()})
        width = d * (1 + len(self.modality_features))
        self.user_fusion = xavier_linear(width, d)
        self.item_fusion = xavier_linear(width, d)
        # FAC heads: ID -> first modality, then the chain (d -> d -> d/2) against the second
        self.id_head = xavier_linear(d, d)
        self.first_modality_head = xavier_linear(d, d)
        if len(self.modality_features) == 2:
            self.chain_head = xavier_linear(d, d)
            self.chain_out_head = xavier_linear(d, d // 2)
            self.second_modality_head = xavier_linear(d, d // 2)

        self.adjacency = FrozenSparse(self.normalized_adjacency(), symmetric=True)
        # no BPR anywhere: denoise: tce | rce | bod raise a clear error instead of doing nothing
        del self.bpr_loss
        self.setup_stale_evaluation(self.stale_eval_quirk, d, d)

    # ------------------------------------------------------------------ representations
    def branch_embeddings(self):
        """Per branch (ID, then each modality), the LightGCN outputs (users (U x d), items (I x d)),
        every branch starting from the shared user table."""
        item_tables = [self.item_id_embedding] + [self.project(name) for name in self.modality_features]
        branches = []
        for items in item_tables:
            nodes = propagate(self.adjacency, torch.cat([self.user_embedding, items]), self.n_layers, combine="mean")
            branches.append(torch.split(nodes, [self.n_users, self.n_items]))
        return branches

    def project(self, name):
        """The modality's item table W_m (x / |x|) + b_m (I x d) from the raw (frozen) features."""
        projection = self.projections[name]
        scaled = F.linear(self.modality_features[name], projection.weight) * self.inverse_feature_norms[name][:, None]
        return scaled + projection.bias

    def fuse(self, branches):
        """(z_U (U x d), z_I (I x d)): the concatenated branches through the user and item heads."""
        users = self.user_fusion(torch.cat([users for users, _ in branches], dim=1))
        items = self.item_fusion(torch.cat([items for _, items in branches], dim=1))
        return users, items

    def forward(self):
        """(z_U (U x d), z_I (I x d)): the fused representations SLMRec scores with."""
        return self.fuse(self.branch_embeddings())

    # ------------------------------------------------------------------ losses
    def fac_loss(self, item_branches):
        r"""FAC over the batch's items: (B x d) ID, first- and (optional) second-modality
        branch rows -> :math:`\mathcal L_v + \mathcal L_t` (scalar)."""
        id_items, first = item_branches[0], item_branches[1]
        anchor = self.id_head(id_items)
        loss = info_nce(anchor, self.first_modality_head(first), self.ssl_temperature, normalize=False)
        if len(item_branches) > 2:
            chained = self.chain_out_head(self.chain_head(anchor))
            loss = loss + info_nce(chained, self.second_modality_head(item_branches[2]), self.ssl_temperature,
                                   normalize=False)
        return loss

    def calculate_loss(self, interaction):
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        branches = self.branch_embeddings()
        user_all, item_all = self.fuse(branches)
        self.remember_representations(user_all, item_all)  # MMRec's stale all_users / all_items (quirk)
        loss = info_nce(user_all[users], item_all[items], self.cl_temperature)
        if self.ssl_weight:
            loss = loss + self.ssl_weight * self.fac_loss([branch_items[items] for _, branch_items in branches])
        return loss
