r"""NF-VLM: noise-filtered vision-language embeddings for full-ranking recommendation.

Paper: "NF-VLM: Noise-Filtered Vision-Language Embeddings for Full-Ranking Recommendation"
(no public reference code; the paper is the authority).

A pre-trained item embedding :math:`x_i \in \mathbb R^d` (CLIP ViT-B/32: d = 512; the
modalities in ``modalities`` are concatenated, default ``[clip]``) is split by a trainable
:math:`P \in \mathbb R^{d \times r}` into a signal and a noise part (Eq. 1)

.. math:: v^{(s)}_i = P P^\top x_i, \qquad v^{(n)}_i = x_i - P P^\top x_i,

and users :math:`h_u \in \mathbb R^r` score items in the r-dimensional signal space:
:math:`\hat y_{ui} = h_u^\top P^\top x_i`.

Loss (Algorithm 1, line 7–9): BPR on (u, i, j) plus :math:`\lambda` times the noise penalty.

- ``nfvlm_noise_scope: batch`` (default, Algorithm 1 line 8): the mean over the batch
  triples of :math:`\|x_i - PP^\top x_i\|^2 + \|x_j - PP^\top x_j\|^2`.
- ``nfvlm_noise_scope: catalogue`` (Eq. 2): :math:`\lambda \sum_{i=1}^{N} \|x_i - PP^\top x_i\|^2 / |D|`
  per batch, so that summing a batch's mean BPR and this term over the :math:`|D|/B` batches
  of an epoch gives exactly Eq. 2 divided by B. The catalogue sum is computed from the
  d x d Gram matrix :math:`G = X^\top X` (computed once) as
  :math:`\operatorname{tr} G - 2 \operatorname{tr}(P^\top G P) + \operatorname{tr}(P^\top G P P^\top P)`,
  O(d² r) per batch whatever the catalogue size.

The penalty has the scale of :math:`\|x\|^2`: with unit-norm embeddings (as CLIP's) a
triple adds at most :math:`2\lambda`, next to a BPR term of :math:`\ln 2 \approx 0.69` at
the start; features of squared norm s need :math:`\lambda` divided by s for the same balance.

Initialisation of P (Algorithm 1, line 1): ``nfvlm_init: pca`` takes the top-r principal
directions of the (centred) item embeddings; ``random`` takes r random orthonormal
directions. Users start as small Gaussians (std 0.01 · ... see :meth:`_init_users`).

Cost of full-sort scoring: :math:`Z = XP` is computed once per evaluation (N·d·r), after
which each user costs r multiplications per item; with r = 16 ≪ d = 512 scoring is 32 times
cheaper than with the raw embedding, which is the point of the low-rank filter.
"""
import torch
import torch.nn as nn

from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender


def principal_directions(features, rank):
    """Top-``rank`` principal directions of the rows of ``features`` (N x d), as a d x rank
    matrix with orthonormal columns, ordered by explained variance."""
    centred = features - features.mean(dim=0, keepdim=True)
    # right singular vectors of the centred data = eigenvectors of its covariance
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:rank].T.contiguous()


def random_orthonormal(dim, rank, generator=None):
    """``rank`` random orthonormal directions in R^dim (d x rank)."""
    gaussian = torch.randn(dim, rank, generator=generator)
    q, _ = torch.linalg.qr(gaussian)
    return q


class NFVLM(MultiModalRecommender):
    one_modality_refusal = (
        "NF-VLM filters a CLIP joint image-text embedding (clip_feat.npy: python -m "
        "recbole_mm.features.clip, or recbole_mm.prepare --clip); modalities: [text] or [image], given, runs it on "
        "that embedding instead, which is not the paper's setting")
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        self.rank = int(config["nfvlm_rank"])
        self.noise_weight = float(config["nfvlm_lambda"])
        self.noise_scope = config["nfvlm_noise_scope"]
        if self.noise_scope not in ("batch", "catalogue"):
            raise ConfigError(f"nfvlm_noise_scope must be 'batch' or 'catalogue', got {self.noise_scope!r}")
        self.item_features = self.concat_features()                 # X: (n_items, d), row 0 padding
        dim = self.item_features.shape[1]
        if not 1 <= self.rank <= dim:
            raise ConfigError(f"nfvlm_rank must lie in [1, {dim}] (the embedding size), got {self.rank}")

        real_items = self.item_features[1:]
        if config["nfvlm_init"] == "pca":
            projection = principal_directions(real_items.cpu(), self.rank)
        elif config["nfvlm_init"] == "random":
            projection = random_orthonormal(dim, self.rank)
        else:
            raise ConfigError(f"nfvlm_init must be 'pca' or 'random', got {config['nfvlm_init']!r}")
        self.projection = nn.Parameter(projection.to(self.device))       # P: (d, r)
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, self.rank, device=self.device))
        nn.init.normal_(self.user_embedding, std=config["nfvlm_user_init_std"])

        self.n_train_triples = max(1, int(self.interaction_matrix.nnz))
        self.gram = real_items.T @ real_items if self.noise_scope == "catalogue" else None

    def item_signal(self, features=None):
        """Low-dimensional signal representation z = Pᵀx, (n x r)."""
        features = self.item_features if features is None else features
        return features @ self.projection

    def noise_residual(self, features):
        """Noise component v⁽ⁿ⁾ = x − PPᵀx of the given rows (n x d) (Eq. 1)."""
        return features - features @ self.projection @ self.projection.T

    def catalogue_noise(self):
        """Σ_i ‖x_i − PPᵀx_i‖² over every item, from the Gram matrix (see the module docstring)."""
        gp = self.gram @ self.projection
        ptgp = self.projection.T @ gp
        return torch.trace(self.gram) - 2 * torch.trace(ptgp) + torch.trace(ptgp @ (self.projection.T @ self.projection))

    def forward(self):
        return self.user_embedding, self.item_signal()

    def calculate_loss(self, interaction):
        users = interaction[self.USER_ID]
        pos_items, neg_items = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        pos_x, neg_x = self.item_features[pos_items], self.item_features[neg_items]
        user_h = self.user_embedding[users]
        pos_scores = (user_h * self.item_signal(pos_x)).sum(-1)
        neg_scores = (user_h * self.item_signal(neg_x)).sum(-1)
        loss = self.bpr_loss(pos_scores, neg_scores)
        if self.noise_weight:
            if self.noise_scope == "batch":
                noise = (self.noise_residual(pos_x).pow(2).sum(-1) + self.noise_residual(neg_x).pow(2).sum(-1)).mean()
            else:
                noise = self.catalogue_noise() / self.n_train_triples
            loss = loss + self.noise_weight * noise
        return loss
