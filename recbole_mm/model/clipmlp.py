r"""CLIPMLP: the MLP baseline of NF-VLM (§4 of the paper,
"NF-VLM: Noise-Filtered Vision-Language Embeddings for Full-Ranking Recommendation").

"A multi-layer perceptron that takes the CLIP embedding :math:`x_i` as input and maps it to a
scalar score via a single hidden layer with nonlinearity. User identity is modeled implicitly
by training the MLP on user–item interaction triples with a pairwise loss."

Taken literally (the default, ``clipmlp_user_input: False``), the score does not depend on the
user: :math:`\hat y_{ui} = w_2^\top \phi(W_1 x_i + b_1) + b_2`, trained with BPR on (u, i, j).
The user enters only through which (i, j) pairs are sampled, so the model learns a global,
content-based ranking of items (a content-aware popularity model).

``clipmlp_user_input: True`` feeds a learned user embedding alongside the item embedding:
:math:`\hat y_{ui} = w_2^\top \phi(W_x x_i + W_u e_u + b_1) + b_2`. Full-sort scoring then
precomputes :math:`W_x X` once per evaluation and evaluates users in chunks of at most
``2**24`` hidden activations, so memory stays bounded on large catalogues.
"""
import torch
import torch.nn as nn

from recbole_mm.model.abstract_recommender import MultiModalRecommender

_ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "tanh": nn.Tanh}
_CHUNK_ELEMENTS = 2 ** 24


class CLIPMLP(MultiModalRecommender):
    one_modality_refusal = (
        "NF-VLM's MLP baseline scores a CLIP joint image-text embedding (clip_feat.npy: python -m "
        "recbole_mm.features.clip, or recbole_mm.prepare --clip); modalities: [text] or [image], given, runs it on "
        "that embedding instead, which is not the paper's setting")
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        self.item_features = self.concat_features()
        hidden = int(config["clipmlp_hidden_size"])
        self.use_user = bool(config["clipmlp_user_input"])
        self.item_layer = nn.Linear(self.item_features.shape[1], hidden)
        self.activation = _ACTIVATIONS[config["clipmlp_activation"]]()
        self.output_layer = nn.Linear(hidden, 1)
        if self.use_user:
            self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
            self.user_layer = nn.Linear(self.embedding_size, hidden, bias=False)

    def _user_offsets(self, users):
        """W_u e_u for the given users, (B x hidden); zeros without user input."""
        if not self.use_user:
            return None
        return self.user_layer(self.user_embedding(users))

    def _score(self, item_hidden, user_offset):
        hidden = item_hidden if user_offset is None else item_hidden + user_offset
        return self.output_layer(self.activation(hidden)).squeeze(-1)

    def calculate_loss(self, interaction):
        users = interaction[self.USER_ID]
        offsets = self._user_offsets(users)
        pos = self._score(self.item_layer(self.item_features[interaction[self.ITEM_ID]]), offsets)
        neg = self._score(self.item_layer(self.item_features[interaction[self.NEG_ITEM_ID]]), offsets)
        return self.bpr_loss(pos, neg)

    def forward(self):
        """Item pre-activations W_x X + b (n_items x hidden), the part shared by all users."""
        return self.item_layer(self.item_features)

    def predict(self, interaction):
        item_hidden = self.evaluation_representations()[interaction[self.ITEM_ID]]
        return self._score(item_hidden, self._user_offsets(interaction[self.USER_ID]))

    def score_rows(self, users, items=None):
        """(B x N) scores with gradient (training-time scoring, no evaluation cache)."""
        features = self.item_features if items is None else self.item_features[items]
        item_hidden = self.item_layer(features)
        offsets = self._user_offsets(users)
        if offsets is None:
            return self._score(item_hidden, None).expand(len(users), -1)
        return self._score(item_hidden.unsqueeze(0), offsets.unsqueeze(1))

    def full_sort_predict(self, interaction):
        users = interaction[self.USER_ID]
        item_hidden = self.evaluation_representations()
        if not self.use_user:
            return self._score(item_hidden, None).repeat(len(users))
        offsets = self._user_offsets(users)
        step = max(1, _CHUNK_ELEMENTS // item_hidden.numel())
        scores = [
            self._score(item_hidden.unsqueeze(0), offsets[start:start + step].unsqueeze(1))
            for start in range(0, len(users), step)
        ]
        return torch.cat(scores, dim=0).reshape(-1)
