r"""LIRDRec: learning item representations directly from multimodal features.

Paper: "Learning Item Representations Directly from Multimodal Features for Effective
Recommendation"; where its equations are ambiguous, the public code (enoche/LIRDRec) decides. There are no
item ID embeddings: items come from feature branches, users from one free table per branch.

1. **Multimodal transformation (Eq. 12)**, once, before training: the shared input
   :math:`X_s = [\mathrm{DCT}(v) \| \mathrm{DCT}(t)]`, with ``dct_mode`` (see
   :func:`recbole_mm.model.layers.dct_features`): ``1d`` (default, the code's: per item along the feature
   axis, which reproduces the paper's results), ``2d`` (the paper's text: over items x
   features) or ``none`` (ablation "w/o DCT": no shared branch at all).
2. **MFT projections (Eq. 13)**, one per branch m ∈ {v, t, s}: :math:`\hat x_m =
   W_2\,\mathrm{LeakyReLU}(W_1 X_m + b_1)`, in → 256 → 64, no bias on :math:`W_2`.
3. **Node matrix**: per branch :math:`[P_m ; \hat x_m]` ((U + I) x 64, :math:`P_m` a free
   xavier-normal user table), rows L2-normalised, branches concatenated → :math:`X^0`.
4. **User–item graph (Eq. 14–15)**: :math:`R = \sum_{l=0}^{L} \hat A^l X^0` on the training
   adjacency (FREEDOM's degree-sensitive pruning with ``dropout``; 0 → the full graph),
   ``n_ui_layers`` = L. Prediction uses the full graph.
5. **Items (Eq. 16–17)**: :math:`R_i + G^{L_{mm}} R_i`, G the frozen kNN item graph on the
   raw image/text features (k = ``knn_k``, image weight ``mm_image_weight``).
6. **Users: progressive weight copying (Eq. 18–20)**. One scorer per branch ("WeCopy",
   64 → 16 → 1, LeakyReLU; the code's ``weco_a/b/c``) gives the logit of that branch's part of
   :math:`R_u`, together :math:`a_u \in \mathbb R^{U \times M}`; with target weights
   :math:`\theta \in \mathbb R^{U \times M}` (xavier-normal, trained),
   :math:`\alpha = \mathrm{softmax}(w_1 a_u + w_2 \theta)` and the user is
   :math:`[\alpha_1 r_1 \| \dots \| \alpha_M r_M]`, so the score is
   :math:`\sum_m \alpha_m \langle r^u_m, r^i_m\rangle`. Each training forward stores α.
   At the start of each epoch e = 1, 2, ... (:meth:`pre_epoch_processing`):
   :math:`w_1 \leftarrow w_1 b^e / (w_1 b^e + w_2)`, :math:`w_2 \leftarrow w_2 / (w_1 b^e + w_2)`
   (starting from (``decay_weight``, 1 − ``decay_weight``), b = ``decay_base``; the decay
   compounds), then :math:`\theta \leftarrow \alpha` of the last training forward.
   The PWC state between epochs, (w1, w2), the epoch counter e and the last α, are buffers,
   so a checkpoint restores the exact scorer of its epoch (θ is a parameter).
   As in the code, w1 falls below 1e-3 by epoch ~15 and copying a softmax output into θ
   pulls α to uniform within a few epochs, after which the fusion is users × 1/M
   (``results/lirdrec_pwc.md``; the control ``use_pwc: False, user_scale: 1/M`` shows it).
7. **Loss**: BPR + ``reg_weight`` · (mean(U_all²) + mean(I_all²)), element means over the full
   user and item output matrices (the code's).

Choices where paper and code differ (the code's is the default):

- DCT: 1-D along features (code) by default; the paper's 2-D is ``dct_mode: 2d``.
- PWC "chunks": the paper splits the user vector into chunks; in the code the chunks are the
  M branch parts (64-d each), which is what is implemented. The paper's chunk count was lost
  in extraction, so no other chunking is offered.
- Evaluation: the code predicts from the embeddings of the last training forward (one step
  stale, pruned graph); here evaluation recomputes them once on the full graph (the base
  class's contract), with α computed fresh from the scorer and θ.
- Weight decay: the code never passes ``weight_decay`` to Adam; RecBole's trainer does.

Ablations (paper Tables III–IV) are switches on this class: ``use_pwc: False`` (users are the
plain concatenation of the branch parts, no weights), ``dct_mode: none`` (no shared branch),
``use_visual: False`` / ``use_textual: False`` (drop that branch; with one modality left the
shared branch is the DCT of that one). Two more switches serve as controls:
``pwc_shared_scorer: True`` (one WeCopy scorer shared by the branches, this port's earlier
reading, instead of one per branch) and ``user_scale`` (users multiplied by it after the
fusion; ``use_pwc: False, user_scale: 1/M`` is "w/o PWC" with the logit scale of a uniform α).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import MLP, FrozenSparse, dct_features, propagate


class LIRDRec(MultiModalRecommender):
    # the paper's "w/o visual" / "w/o textual" ablations (use_visual / use_textual); enoche/LIRDRec's
    # code itself stops on a one-modality folder (it transforms v_feat and t_feat unconditionally)
    one_modality_ok = True
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        d = self.embedding_size
        self.n_ui_layers = config["n_ui_layers"]
        self.n_mm_layers = config["n_mm_layers"]
        self.reg_weight = config["reg_weight"]
        self.use_pwc = bool(config["use_pwc"])
        self.dct_mode = config["dct_mode"]
        self.decay_base = float(config["decay_base"])

        inputs = self._branch_inputs(config)
        self.branch_names = list(inputs)
        self.branch_inputs = inputs
        self.projections = nn.ModuleDict({
            name: MLP([x.shape[1], config["mft_hidden_size"], d], activation="leakyrelu", last_bias=False)
            for name, x in inputs.items()
        })
        self.user_preferences = nn.ParameterDict({
            name: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d))) for name in inputs
        })
        n_branches = len(inputs)
        self.user_scale = float(config["user_scale"])
        scorer_dims = [d, config["pwc_hidden_size"], 1]
        if config["pwc_shared_scorer"]:
            shared = MLP(scorer_dims, activation="leakyrelu")
            self.weight_scorers = nn.ModuleDict({name: shared for name in inputs})
        else:
            self.weight_scorers = nn.ModuleDict({name: MLP(scorer_dims, activation="leakyrelu") for name in inputs})
        self.target_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, n_branches)))
        # PWC state carried from epoch to epoch: buffers, so that checkpoints hold it
        decay_weight = float(config["decay_weight"])
        self.register_buffer("copy_weights", torch.tensor([decay_weight, 1.0 - decay_weight], dtype=torch.float64))
        self.register_buffer("copy_epoch", torch.zeros((), dtype=torch.long))
        # α of the last training forward; θ itself until then, so the first copy changes nothing
        self.register_buffer("last_attention", self.target_weights.detach().clone())

        # both graphs are fixed: CSR copies whose backward needs no transposing (FrozenSparse)
        self.item_graph = FrozenSparse(
            self.item_knn_graph(config["knn_k"], self._graph_weights(config["mm_image_weight"])))
        self.setup_edge_pruning(config["dropout"])

    def _branch_inputs(self, config):
        """Input matrix of each branch: 'image', 'text' and the DCT 'shared' branch (Eq. 12)."""
        used = []
        if config["use_visual"] and "image" in self.modality_features:
            used.append("image")
        if config["use_textual"] and "text" in self.modality_features:
            used.append("text")
        if not used:
            raise ConfigError("LIRDRec needs at least one of the 'image' and 'text' modalities")
        inputs = {name: self.modality_features[name] for name in used}
        if self.dct_mode != "none":
            inputs["shared"] = self._shared_input(used)
        return inputs

    def _graph_weights(self, image_weight):
        """kNN graph mix over the modalities in use: w · G_image + (1 − w) · G_text, or the one
        modality's graph alone under the "w/o visual" / "w/o textual" ablations."""
        used = [name for name in ("image", "text") if name in self.branch_names]
        if len(used) == 1:
            return {used[0]: 1.0}
        return {"image": image_weight, "text": 1.0 - image_weight}

    def _shared_input(self, modalities):
        """[DCT(v) ‖ DCT(t)] over the real items (row 0, padding, stays zero), (n_items x Σd)."""
        parts = []
        for name in modalities:
            matrix = self.modality_features[name]
            transformed = np.zeros(tuple(matrix.shape), dtype=np.float32)
            transformed[1:] = dct_features(matrix[1:].cpu().numpy(), self.dct_mode)
            parts.append(transformed)
        return torch.from_numpy(np.concatenate(parts, axis=1)).to(self.device)

    # ------------------------------------------------------------------ PWC
    def pre_epoch_processing(self):
        """Progressive weight copying (Eq. 18–20) and edge resampling at the start of an epoch."""
        self.copy_epoch += 1
        if self.use_pwc:
            w1, w2 = self.copy_weights.tolist()
            decayed = w1 * self.decay_base ** int(self.copy_epoch)
            self.copy_weights.copy_(torch.tensor([decayed / (decayed + w2), w2 / (decayed + w2)]))
            with torch.no_grad():
                self.target_weights.copy_(self.last_attention)
        self.resample_edges()

    def user_attention(self, user_parts):
        """α = softmax(w1 · a_u + w2 · θ) over the branches, a_u from each branch's scorer, (U x M)."""
        logits = torch.cat([self.weight_scorers[name](part) for name, part in zip(self.branch_names, user_parts)],
                           dim=1)
        w1, w2 = self.copy_weights.to(logits.dtype)
        return F.softmax(w1 * logits + w2 * self.target_weights, dim=1)

    # ------------------------------------------------------------------ representations
    def node_features(self):
        """X⁰: per branch [P_m ; x̂_m], rows L2-normalised, concatenated, ((U + I) x M·d)."""
        blocks = []
        for name in self.branch_names:
            items = self.projections[name](self.branch_inputs[name])
            blocks.append(F.normalize(torch.cat([self.user_preferences[name], items], dim=0), dim=1))
        return torch.cat(blocks, dim=1)

    def forward(self):
        nodes = propagate(self.user_item_adjacency(), self.node_features(), self.n_ui_layers, combine="sum")
        users, items = torch.split(nodes, [self.n_users, self.n_items])
        items = items + propagate(self.item_graph, items, self.n_mm_layers, combine="last")
        if self.use_pwc:
            parts = torch.chunk(users, len(self.branch_names), dim=1)
            attention = self.user_attention(parts)
            if self.training:
                self.last_attention.copy_(attention.detach())
            users = torch.cat([attention[:, m:m + 1] * part for m, part in enumerate(parts)], dim=1)
        if self.user_scale != 1.0:
            users = users * self.user_scale
        return users, items

    def calculate_loss(self, interaction):
        user_all, item_all = self.forward()
        loss, _ = self.bpr_on_batch(interaction, user_all, item_all)
        return loss + self.reg_weight * (user_all.pow(2).mean() + item_all.pow(2).mean())
