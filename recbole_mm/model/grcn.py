r"""GRCN: graph-refined convolutional network for multimedia recommendation with implicit feedback.

Yang et al., ACM MM 2020, as MMRec implements it (``src/models/grcn.py`` of enoche/MMRec). Nodes: users 0..U-1, then items; the train graph's directed edges s -> t run
user -> item and item -> user (:func:`~recbole_mm.data.graphs.bipartite_edges`).

**Content branch** (one per modality m, width d_c = ``content_embedding_size``): item features
:math:`f_i = \mathrm{rownorm}(\mathrm{LeakyReLU}(\mathrm{Lin}(x_i)))`, user preferences
:math:`p_u = \mathrm{rownorm}(P_{m,u})` from a free U x d_c table. The attention convolution on
a set of directed edges,

.. math:: \alpha_{s \to t} = \mathrm{softmax}_{s' \to t}\big(z_t^\top z_s\big), \qquad
          \mathrm{conv}(z)_t = \sum_{s \to t} \alpha_{s \to t}\, z_s,

first routes ``n_routing`` rounds of :math:`p_u \leftarrow \mathrm{rownorm}(p_u +
\mathrm{conv}([p; f])_u)` over the item -> user edges (each user's preference is pulled towards
its items, weighted by agreement), then runs once over both directions: the branch gives
:math:`c_m = z + \mathrm{conv}(z)`, :math:`z = [p; f]`, and the attention :math:`\alpha_m` of
every directed edge.

**Graph refinement.** The weight of edge s -> t is
:math:`w_{s \to t} = \mathrm{ReLU}\big(\max_m \alpha_{m, s \to t}\, \kappa_{s, m}\big)` with
:math:`\kappa` a free (U + I) x M confidence table read at the sending node (MMRec: its
``[κ[users]; κ[items]]`` lines up with the user -> item edges, then the item -> user ones);
the ReLU is MMRec's ``pruning`` (``pruning: False`` keeps negative weights).

**ID branch.** :math:`e = \mathrm{rownorm}(E)` from a free (U + I) x d table,
:math:`h^{(l+1)}_t = \sum_{s \to t} w_{s \to t}\, h^{(l)}_s` for ``n_id_layers`` layers,
output :math:`e + h^{(1)} + h^{(2)}`.

**Score and loss.** Representation :math:`[\mathrm{id} \| c_{image} \| c_{text}]` (in
``modalities`` order), score the dot product. Loss (MMRec): BPR + λ [mean(E_u²) + mean(E_{i±}²)
+ mean(P_image²) + Σ_m mean(P_{m,u}²)], λ = ``reg_weight``: raw (unnormalised) ID rows of the
batch's users and positive/negative items, the image preference table over all users (MMRec
adds that term on top of the per-batch ones), and every modality's preferences of the batch
users. MMRec computes a confidence L2 but never adds it; so do we.

``grcn_routing_quirk`` (default ``False``): MMRec passes the routing convolution only the
user -> item edges and PyG's default ``source_to_target`` flow sends messages to the edges'
targets, so during routing only items receive, the users' update is zero and the routing
rounds change nothing. ``True`` reproduces that (the rounds run on the user -> item edges).

Message passing is one CSR product per convolution on a fixed
:class:`~recbole_mm.model.layers.EdgeGraph` (attention and edge weights carry gradient through
it), with :func:`~recbole_mm.model.layers.scatter_softmax` (torch-scatter when installed) for
the attention normalisation; not PyG.
MMRec's edge dropout is 0 and its ``has_act`` False: neither is offered. MMRec scores
evaluation from the last training batch's output (one optimiser step stale); we run a fresh
forward pass per evaluation, and ``grcn_stale_eval_quirk: True`` ranks as MMRec
(:meth:`~recbole_mm.model.abstract_recommender.MultiModalRecommender.setup_stale_evaluation`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.data.graphs import bipartite_edges, interaction_edges
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.loss import node_rows_l2
from recbole_mm.model.layers import EdgeGraph, scatter_softmax


def attention_conv(nodes, graph):
    r"""Dot-product attention convolution over directed edges (MMRec's ``GATConv``).

    Args:
        nodes: (N x d) node vectors z.
        graph: :class:`~recbole_mm.model.layers.EdgeGraph` of the E edges s -> t.

    Returns:
        (N x d) :math:`\sum_{s \to t} \alpha_{s \to t} z_s` (zero for nodes without in-edges),
        and the attention :math:`\alpha` (E,), a softmax over each target's in-edges.
    """
    alpha = scatter_softmax(graph.dot(nodes), graph.targets, nodes.shape[0])
    return graph.aggregate(nodes, alpha), alpha


class GRCNContentBranch(nn.Module):
    """One modality's content graph of GRCN (MMRec's ``CGCN``).

    Args:
        n_users: U.
        feature_dim: width of the modality's item features.
        embedding_dim: d_c.
        n_routing: routing rounds.
    """

    def __init__(self, n_users, feature_dim, embedding_dim, n_routing):
        super().__init__()
        self.n_users = n_users
        self.n_routing = n_routing
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, embedding_dim)))
        self.projection = nn.Linear(feature_dim, embedding_dim)
        nn.init.xavier_normal_(self.projection.weight)

    def item_vectors(self, item_features):
        """rownorm(LeakyReLU(Lin(x))), (I x d_c)."""
        return F.normalize(F.leaky_relu(self.projection(item_features)), dim=1)

    def route(self, item_vectors, routing_graph):
        """User preferences after the routing rounds over the given edges, (U x d_c)."""
        preference = F.normalize(self.preference, dim=1)
        for _ in range(self.n_routing):
            nodes = torch.cat([preference, item_vectors], dim=0)
            received, _ = attention_conv(nodes, routing_graph)
            preference = F.normalize(preference + received[:self.n_users], dim=1)
        return preference

    def forward(self, item_features, graph, routing_graph):
        """((U + I) x d_c) content representations and the (E,) attention of the graph's edges."""
        items = self.item_vectors(item_features)
        nodes = torch.cat([self.route(items, routing_graph), items], dim=0)
        received, alpha = attention_conv(nodes, graph)
        return nodes + received, alpha


class GRCN(MultiModalRecommender):
    # MMRec's builds only the branches whose features exist (its text-only path then fails on a
    # typo, ``conetent_rep = t_rep``, that leaves the content part empty; here it works)
    one_modality_ok = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        for key in ("n_routing", "n_id_layers"):
            if not isinstance(config[key], int) or config[key] < 0:
                raise ConfigError(f"{key} must be a non-negative integer, got {config[key]!r}")
        self.n_id_layers = config["n_id_layers"]
        self.reg_weight = config["reg_weight"]
        self.pruning = bool(config["pruning"])
        self.routing_quirk = bool(config["grcn_routing_quirk"])

        users, items = interaction_edges(self.interaction_matrix)
        self.sources, self.targets = bipartite_edges(users.to(self.device), items.to(self.device), self.n_users)
        n_edges = len(users)
        # routing: item -> user edges (the users receive); MMRec's quirk: user -> item edges
        half = slice(0, n_edges) if self.routing_quirk else slice(n_edges, 2 * n_edges)
        n_nodes = self.n_users + self.n_items
        self.graph = EdgeGraph(self.sources, self.targets, n_nodes)
        self.routing_graph = EdgeGraph(self.sources[half], self.targets[half], n_nodes)

        content_dim = config["content_embedding_size"]
        self.branches = nn.ModuleDict({
            name: GRCNContentBranch(self.n_users, features.shape[1], content_dim, config["n_routing"])
            for name, features in self.modality_features.items()
        })
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, self.embedding_size)))
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, len(self.branches))))
        width = self.embedding_size + content_dim * len(self.branches)
        self.setup_stale_evaluation(config["grcn_stale_eval_quirk"], width, width)

    def content_outputs(self):
        """dict modality -> ((U + I) x d_c representations, (2E,) edge attention)."""
        return {name: branch(self.modality_features[name], self.graph, self.routing_graph)
                for name, branch in self.branches.items()}

    def edge_weights(self, attentions):
        r""":math:`\mathrm{ReLU}(\max_m \alpha_m \kappa_{s,m})` per directed edge s -> t: (2E,) from the
        list of the modalities' (2E,) attentions (no ReLU with ``pruning: False``)."""
        scored = torch.stack(attentions, dim=1) * self.confidence.index_select(0, self.sources)
        weights = scored.max(dim=1).values
        return torch.relu(weights) if self.pruning else weights

    def id_representations(self, weights):
        """e + h¹ + ... + h^L on the refined graph, ((U + I) x d)."""
        layers = [F.normalize(self.id_embedding, dim=1)]
        for _ in range(self.n_id_layers):
            layers.append(self.graph.aggregate(layers[-1], weights))
        return torch.stack(layers).sum(dim=0)

    def forward(self):
        outputs = self.content_outputs()
        weights = self.edge_weights([alpha for _, alpha in outputs.values()])
        nodes = torch.cat([self.id_representations(weights)] + [rep for rep, _ in outputs.values()], dim=1)
        return torch.split(nodes, [self.n_users, self.n_items])

    def regularisation(self, interaction):
        """λ [mean(E_u²) + mean(E_i±²) + mean(P_image²) + Σ_m mean(P_m,u²)] (MMRec's terms)."""
        reg = node_rows_l2(self.id_embedding, interaction, self.USER_ID, (self.ITEM_ID, self.NEG_ITEM_ID), self.n_users)
        if "image" in self.branches:
            reg = reg + (self.branches["image"].preference ** 2).mean()
        for branch in self.branches.values():
            reg = reg + (branch.preference[interaction[self.USER_ID]] ** 2).mean()
        return self.reg_weight * reg

    def calculate_loss(self, interaction):
        user_all, item_all = self.forward()
        self.remember_representations(user_all, item_all)
        loss, _ = self.bpr_on_batch(interaction, user_all, item_all)
        return loss + self.regularisation(interaction)
