"""Graph builders shared by every model: user–item adjacency, kNN item–item graphs, and
FREEDOM's degree-sensitive edge pruning.

All graphs are ``torch.sparse_coo_tensor`` (coalesced). Node layout of the bipartite graph:
users ``0..U-1`` then items ``U..U+I-1`` (RecBole internal ids, padding rows included, so a
padding node simply has no edges).
"""
import hashlib
import json
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import svds

from recbole_mm.errors import ConfigError
from recbole_mm.files import atomic_torch_save

DEGREE_EPS = 1e-7
KNN_CACHE_VERSION = 2  # 2: header with shape, entry count and checksum

logger = logging.getLogger(__name__)


def interaction_edges(inter_matrix):
    """Deduplicated (user, item) edge lists of a scipy sparse U x I interaction matrix.

    Returns:
        (users, items): int64 torch tensors of equal length (CPU).
    """
    binary = (inter_matrix.tocsr() > 0).tocoo()
    return torch.from_numpy(binary.row.astype(np.int64)), torch.from_numpy(binary.col.astype(np.int64))


def ragged_rows(pointers, values, rows):
    """The entries of the given rows of a ragged table (CSR: row r holds
    ``values[pointers[r]:pointers[r + 1]]``), flattened, without a loop over the rows.

    Args:
        pointers: (R + 1,) int64; values: (nnz,); rows: (B,) int64 row ids.

    Returns:
        (position in ``rows`` (n,), value (n,)): for each asked row in order, its entries in order.
    """
    starts, counts = pointers[rows], pointers[rows + 1] - pointers[rows]
    positions = torch.arange(len(rows), device=rows.device).repeat_interleave(counts)
    offsets = torch.arange(int(counts.sum()), device=rows.device) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    return positions, values[starts.repeat_interleave(counts) + offsets]


def bipartite_adjacency(users, items, n_users, n_items):
    r"""Symmetric-normalised bipartite adjacency :math:`\hat A = D^{-1/2} A D^{-1/2}`.

    ``A = [[0, R], [R^T, 0]]`` for the edges (users, items); degrees count edges, plus
    ``1e-7`` so isolated nodes do not divide by zero; no self loops (LightGCN, MMRec).

    Args:
        users, items: int64 tensors (E,), on the device the graph should live on.

    Returns:
        sparse float32 tensor, (U + I) x (U + I).
    """
    n_nodes = n_users + n_items
    rows, cols = bipartite_edges(users, items, n_users)
    degree = torch.bincount(rows, minlength=n_nodes).float() + DEGREE_EPS
    inv_sqrt = degree.pow(-0.5)
    values = inv_sqrt[rows] * inv_sqrt[cols]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_nodes, n_nodes)).coalesce()


def normalized_adjacency(inter_matrix, n_users, n_items, device="cpu"):
    """:func:`bipartite_adjacency` of a train interaction matrix (scipy sparse, U x I)."""
    users, items = interaction_edges(inter_matrix)
    return bipartite_adjacency(users.to(device), items.to(device), n_users, n_items)


def bipartite_edges(users, items, n_users):
    """Directed edges of the bidirectional user–item graph, for message passing on edges.

    Args:
        users, items: int64 tensors (E,) of train edges (item ids not offset).

    Returns:
        (sources, targets): int64 tensors (2E,) of node ids (items offset by ``n_users``): the
        E user -> item edges first, then the same edges item -> user, in the same order.
    """
    item_nodes = items + n_users
    return torch.cat([users, item_nodes]), torch.cat([item_nodes, users])


def mean_adjacency(sources, targets, n_nodes):
    r"""Row-normalised adjacency :math:`D^{-1} A` with :math:`A_{ts} = 1` for every edge s -> t,
    so that :math:`(D^{-1} A X)_t` is the mean of :math:`x_s` over t's in-neighbours (PyG's
    ``aggr='mean'``); a node without in-edges gets a zero row.

    Returns:
        sparse float32 tensor, n_nodes x n_nodes, on the edges' device.
    """
    in_degree = torch.bincount(targets, minlength=n_nodes).float().clamp_min(1.0)
    values = in_degree.reciprocal()[targets]
    return torch.sparse_coo_tensor(torch.stack([targets, sources]), values, (n_nodes, n_nodes)).coalesce()


def random_walk_adjacency(users, items, n_users, n_items, self_loops=True):
    r"""Random-walk normalised bipartite adjacency :math:`D^{-1}(A + I)` (NGCF's code base:
    LATTICE and MICRO as their authors and MMRec ship them).

    ``A = [[0, R], [R^T, 0]]`` for the edges (users, items); with ``self_loops`` every node
    also links to itself, so row i averages node i and its neighbours and every row sums to 1
    (a node without edges keeps its own vector); without, :math:`D^{-1}A` (isolated rows empty).
    Not symmetric: :math:`\hat A_{ui} = 1/(d_u + 1)` but :math:`\hat A_{iu} = 1/(d_i + 1)`.

    Args:
        users, items: int64 tensors (E,), on the device the graph should live on.

    Returns:
        sparse float32 tensor, (U + I) x (U + I).
    """
    n_nodes = n_users + n_items
    rows, cols = bipartite_edges(users, items, n_users)
    if self_loops:
        nodes = torch.arange(n_nodes, device=rows.device)
        rows, cols = torch.cat([rows, nodes]), torch.cat([cols, nodes])
    degree = torch.bincount(rows, minlength=n_nodes).float()
    values = degree.clamp_min(1.0).reciprocal()[rows]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_nodes, n_nodes)).coalesce()


class DegreeSensitiveEdgeSampler:
    r"""FREEDOM's degree-sensitive edge pruning (Zhou & Shen, 2023; MMRec ``FREEDOM``).

    Each call of :meth:`sample` keeps :math:`\lfloor E \cdot (1 - \text{dropout}) \rfloor`
    train edges drawn without replacement with probability proportional to
    :math:`p_{ui} = 1/\sqrt{d_u d_i}` (degrees of the full train graph), then re-normalises
    the kept subgraph with :func:`bipartite_adjacency`. Weighted sampling without
    replacement uses Efraimidis–Spirakis keys ``log(U) / p`` and a top-k: one vectorised
    draw, no limit on the number of edges (``torch.multinomial`` stops at 2^24).
    """

    def __init__(self, inter_matrix, n_users, n_items, dropout, device="cpu"):
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"edge dropout must lie in [0, 1), got {dropout}")
        users, items = interaction_edges(inter_matrix)
        self.users, self.items = users.to(device), items.to(device)
        self.n_users, self.n_items = n_users, n_items
        self.n_keep = int(len(users) * (1.0 - dropout))
        user_degree = torch.bincount(self.users, minlength=n_users).float()
        item_degree = torch.bincount(self.items, minlength=n_items).float()
        self.edge_weight = (user_degree[self.users] * item_degree[self.items]).pow(-0.5)

    def sample_edges(self, generator=None):
        """Indices (into the train edge list) of the edges kept this epoch, shape (n_keep,)."""
        if self.n_keep >= len(self.users):
            return torch.arange(len(self.users), device=self.users.device)
        uniform = torch.rand(len(self.users), generator=generator, device=self.users.device)
        keys = torch.log(uniform.clamp_min(1e-30)) / self.edge_weight
        return torch.topk(keys, self.n_keep, sorted=False).indices

    def sample(self, generator=None):
        """The pruned, re-normalised training adjacency, (U + I) x (U + I) sparse."""
        kept = self.sample_edges(generator)
        return bipartite_adjacency(self.users[kept], self.items[kept], self.n_users, self.n_items)


def principal_subgraph(adjacency, rank, share=0.25, threshold=1e-3, budget_elements=2 ** 26):
    r"""PGL's *global* principal subgraph (Yu et al., AAAI 2025; MMRec ``pgl.py``).

    From the ``rank`` largest singular triplets :math:`(u_k, \sigma_k, v_k)` of the normalised
    adjacency :math:`\hat A` (descending), with :math:`m = \lfloor \text{share} \cdot
    \text{rank} \rfloor`:

    .. math:: P = \sum_{k < m} \sigma_k \sigma_{\text{rank} - m + k}\, u_k v_k^\top,

    entries with :math:`|P_{ij}| < \text{threshold}` dropped. MMRec takes the triplets from the
    ``sparsesvd`` package and forms P as a dense N x N array; here they come from
    ``scipy.sparse.linalg.svds`` (the same subspaces: P does not depend on the signs of the
    singular vectors, nor on the basis within a repeated singular value, which shares one
    weight) and P is formed ``budget_elements`` entries of rows at a time.

    Args:
        adjacency: scipy sparse (N x N).
        rank: singular triplets computed (MMRec: ``embedding_size``).

    Returns:
        sparse float32 torch tensor (N x N).
    """
    n_rows, n_cols = adjacency.shape
    if not 1 <= rank < min(n_rows, n_cols):
        raise ConfigError(f"the principal subgraph's rank must lie in [1, {min(n_rows, n_cols) - 1}], got {rank}")
    left, values, right = svds(adjacency.astype(np.float64), k=rank, random_state=0)
    order = np.argsort(-values)
    left, values, right = left[:, order], values[order], right[order]
    m = int(share * rank)
    weights = values[:m] * values[rank - m:]
    left = torch.from_numpy(left[:, :m] * weights)
    right = torch.from_numpy(right[:m])
    chunk = _row_chunk(n_cols, budget_elements)
    indices, kept = [], []
    for start in range(0, n_rows, chunk):
        block = left[start:start + chunk] @ right
        rows, cols = torch.nonzero(block.abs() >= threshold, as_tuple=True)
        indices.append(torch.stack([rows + start, cols]))
        kept.append(block[rows, cols].float())
    return torch.sparse_coo_tensor(torch.cat(indices, 1), torch.cat(kept), (n_rows, n_cols)).coalesce()


def _row_chunk(n_columns, budget_elements):
    return max(1, budget_elements // max(n_columns, 1))


def knn_neighbours(features, k, budget_elements=2 ** 26, shrink=0.0):
    r"""Top-k cosine neighbours of every row (itself included), computed in row chunks.

    With ``shrink`` > 0 the similarity is the shrunk cosine
    :math:`f_i^\top f_j / (\lVert f_i \rVert \lVert f_j \rVert + \text{shrink})`
    (ItemKNNCBF's; it ranks pairs of small norm lower).

    Never forms the n x n similarity matrix: each chunk holds ``chunk x n`` similarities, with
    ``chunk = budget_elements // n`` (256 MB of float32 by default), and the feature matrix
    is not copied (cosine = dot product divided by the two norms).

    Args:
        features: float tensor (n, d).
        k: neighbours per row, ``1 <= k <= n``.

    Returns:
        (neighbours, similarities): (n, k) int64 and float32 tensors on ``features.device``.
    """
    n_rows = features.shape[0]
    if not 1 <= k <= n_rows:
        raise ConfigError(f"knn k must lie in [1, {n_rows}], got {k}")
    features = features.float()
    norms = features.norm(dim=1).clamp_min(1e-12)
    chunk = _row_chunk(n_rows, budget_elements)
    neighbours, similarities = [], []
    for start in range(0, n_rows, chunk):
        if shrink:
            sims = features[start:start + chunk] @ features.T
            sims.div_(torch.outer(norms[start:start + chunk], norms).add_(shrink))
        else:
            block = features[start:start + chunk] / norms[start:start + chunk, None]
            sims = (block @ features.T).div_(norms)  # in place: one chunk x n buffer at a time
        top = torch.topk(sims, k, dim=1)
        neighbours.append(top.indices)
        similarities.append(top.values)
        del sims
    return torch.cat(neighbours), torch.cat(similarities)


def knn_graph(features, k, weighted=False, budget_elements=2 ** 26):
    r"""Normalised kNN graph of one modality, MMRec style.

    Keeps the top-k cosine neighbours of each row (self included) with edge weight 1
    (``weighted=True``: the cosine itself, as LATTICE/MGCN do), then normalises with the
    **row** degree on both sides, :math:`\tilde S_{ij} = S_{ij} / \sqrt{d_i d_j}`,
    :math:`d_i = \sum_j S_{ij}`. Unweighted, every row has k entries and every value is 1/k.

    Returns:
        sparse float32 tensor, n x n.
    """
    neighbours, similarities = knn_neighbours(features, k, budget_elements)
    n_rows = features.shape[0]
    rows = torch.arange(n_rows, device=neighbours.device).repeat_interleave(k)
    cols = neighbours.reshape(-1)
    values = similarities.reshape(-1) if weighted else torch.ones_like(cols, dtype=torch.float32)
    degree = torch.zeros(n_rows, device=values.device).index_add_(0, rows, values)
    inv_sqrt = degree.clamp_min(1e-12).pow(-0.5)
    values = inv_sqrt[rows] * values * inv_sqrt[cols]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_rows, n_rows)).coalesce()


def tensor_digest(tensor):
    """SHA-1 of a tensor's shape, dtype and bytes (its content hash for cache keys)."""
    array = tensor.detach().cpu().contiguous().numpy()
    digest = hashlib.sha1(f"{array.shape}{array.dtype}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def item_knn_graph(features, weights, k, weighted=False, cache_dir=None, budget_elements=2 ** 26):
    r"""Mixed kNN item–item graph :math:`G = \sum_m w_m G_m` over the modalities in ``weights``.

    Row and column 0 (RecBole's padding item) are left empty. With ``cache_dir``, the graph
    is stored there under a key of every parameter and each feature matrix's content hash, so
    changing k, a weight or a feature file never reuses a stale graph. A cache file that
    cannot be read or fails its checks (see :func:`load_cached_graph`) is reported with its
    path and rebuilt; writers never share a temporary file, so parallel runs leave a whole file.

    Args:
        features: dict modality -> float tensor (n_items, d), row 0 = padding.
        weights: dict modality -> mixing weight (e.g. ``{"image": 0.1, "text": 0.9}``).

    Returns:
        sparse float32 tensor, n_items x n_items, on the features' device.
    """
    missing = sorted(set(weights) - set(features))
    if missing:
        raise ConfigError(f"kNN graph: no features for modalities {missing} (have {sorted(features)})")
    active = {name: float(w) for name, w in sorted(weights.items()) if float(w) != 0.0}
    device = next(iter(features.values())).device
    n_items = next(iter(features.values())).shape[0]

    def build():
        graph = None
        for name, weight in active.items():
            part = knn_graph(features[name][1:], k, weighted, budget_elements)
            part = torch.sparse_coo_tensor(part.indices() + 1, weight * part.values(), (n_items, n_items))
            graph = part if graph is None else graph + part
        if graph is None:
            graph = torch.sparse_coo_tensor(torch.zeros((2, 0), dtype=torch.long), torch.zeros(0), (n_items, n_items))
        return graph.coalesce()

    key = {"k": int(k), "weighted": bool(weighted), "weights": active,
           "digests": {name: tensor_digest(features[name]) for name in active}}
    return cached_graph(cache_dir, "knn", key, n_items, build).to(device)


def cached_graph(cache_dir, prefix, key, n_nodes, build):
    """The sparse (n_nodes x n_nodes) graph ``build()`` returns, stored in ``cache_dir`` (when
    given) as ``<prefix>_<hash of key>.pt`` and read back from there next time (see
    :func:`store_cached_graph`, :func:`load_cached_graph`). ``key`` (a JSON-able dict) must
    hold every parameter and a content hash of every input the graph depends on.

    Returns:
        coalesced sparse float32 tensor (CPU when read from the cache, else where ``build`` put it).
    """
    cache_path = cache_key = None
    if cache_dir:
        cache_key = hashlib.sha1(json.dumps({"version": KNN_CACHE_VERSION, **key}, sort_keys=True)
                                 .encode()).hexdigest()[:20]
        cache_path = os.path.join(cache_dir, f"{prefix}_{cache_key}.pt")
        cached = load_cached_graph(cache_path, n_nodes, cache_key)
        if cached is not None:
            return cached
    graph = build().coalesce()
    if cache_path:
        store_cached_graph(cache_path, graph, cache_key)
    return graph


def _graph_checksum(indices, values):
    digest = hashlib.sha1()
    for tensor in (indices, values):
        digest.update(memoryview(tensor.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


def store_cached_graph(path, graph, key):
    """Write a sparse (n x n) graph to ``path`` with a header (format, key, shape, entry count,
    SHA-1 of the entries) that :func:`load_cached_graph` checks; atomically (a temporary file
    of this writer's own, then ``os.replace``). A cache that cannot be written is skipped with
    a warning: the graph is still returned to the caller."""
    indices, values = graph.indices().cpu(), graph.values().cpu()
    record = {
        "format": KNN_CACHE_VERSION, "key": key, "shape": list(graph.shape), "nnz": int(values.numel()),
        "checksum": _graph_checksum(indices, values), "indices": indices, "values": values,
    }
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_torch_save(record, path)
    except OSError as error:
        logger.warning(f"kNN cache {path}: not written ({error}); the graph is rebuilt next time")


def load_cached_graph(path, n_items, key):
    """The cached graph at ``path`` as a coalesced CPU sparse tensor, ``None`` when there is none,
    or ``None`` with a warning naming the file when it is unreadable (truncated, corrupt) or
    does not match: another format, key, shape or entry count, indices out of range, or a
    checksum that differs from its entries. The caller then rebuilds and overwrites it."""
    if not os.path.isfile(path):
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
        problem = _cache_problem(record, n_items, key)
    except Exception as error:  # truncated zip, bad pickle, ...: every way a file can be damaged
        problem = f"unreadable ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
    if problem:
        logger.warning(f"kNN cache {path} is invalid: {problem}; rebuilding it")
        return None
    return torch.sparse_coo_tensor(record["indices"], record["values"], (n_items, n_items)).coalesce()


def _cache_problem(record, n_items, key):
    """What is wrong with a loaded cache record, or ``None``."""
    if not isinstance(record, dict) or not {"format", "key", "shape", "nnz", "checksum", "indices",
                                            "values"} <= set(record):
        return "not a recbole_mm kNN cache record"
    if record["format"] != KNN_CACHE_VERSION or record["key"] != key:
        return f"format {record['format']} / key {record['key']}, expected {KNN_CACHE_VERSION} / {key}"
    if list(record["shape"]) != [n_items, n_items]:
        return f"shape {record['shape']}, expected {[n_items, n_items]}"
    indices, values, nnz = record["indices"], record["values"], record["nnz"]
    if not (isinstance(indices, torch.Tensor) and isinstance(values, torch.Tensor)
            and indices.dtype == torch.long and tuple(indices.shape) == (2, nnz)
            and values.dtype == torch.float32 and tuple(values.shape) == (nnz,)):
        return f"entries of the wrong type or count (header says {nnz})"
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= n_items):
        return f"indices outside [0, {n_items})"
    if _graph_checksum(indices, values) != record["checksum"]:
        return "checksum mismatch"
    return None


def knn_edges(embeddings, k, budget_elements=2 ** 26):
    r"""Top-k cosine neighbours of every row with **differentiable** cosine weights.

    The neighbour indices come from :func:`knn_neighbours` without gradient (row chunks,
    never the n x n matrix); only the n·k chosen similarities
    :math:`\cos(e_i, e_j) = \hat e_i \cdot \hat e_j` are then recomputed with gradient by
    gathering the normalised rows. ``torch.topk`` passes gradient only to the values it
    selects, so this is exactly the gradient of the dense
    ``topk(normalize(E) @ normalize(E).T)``, at O(n k d) memory instead of O(n²).

    Args:
        embeddings: float tensor (n, d), may require grad.
        k: neighbours per row (self included: its cosine is 1).

    Returns:
        (rows, cols, values): (n·k,) int64, int64 and float tensors; ``values`` carry gradient
        to ``embeddings``.
    """
    with torch.no_grad():
        neighbours, _ = knn_neighbours(embeddings.detach(), k, budget_elements)
    unit = F.normalize(embeddings.float(), dim=1)
    values = torch.einsum("nd,nkd->nk", unit, unit[neighbours])
    rows = torch.arange(embeddings.shape[0], device=embeddings.device).repeat_interleave(k)
    return rows, neighbours.reshape(-1), values.reshape(-1)


def symmetric_edge_weights(rows, cols, values, n_nodes):
    r""":math:`S_{ij} / \sqrt{d_i d_j}` with the **row** degree :math:`d_i = \sum_j S_{ij}` (MMRec's
    ``compute_normalized_laplacian`` of a kNN graph), differentiable in ``values``.

    Args:
        rows, cols: int64 (E,) edge end points (duplicates add up, as in a sparse sum).
        values: float (E,) edge weights.

    Returns:
        float (E,) normalised weights.
    """
    degree = torch.zeros(n_nodes, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    inv_sqrt = degree.clamp_min(1e-12).pow(-0.5)
    return inv_sqrt[rows] * values * inv_sqrt[cols]


def learned_item_graph(embeddings, k, weights=None, budget_elements=2 ** 26):
    r"""LATTICE's learned item–item graph from trainable item embeddings, with gradient.

    For each modality m, keep the top-k cosine neighbours of every item under
    :math:`E_m` (:func:`knn_edges`: weights are the cosines themselves), mix the modalities
    :math:`S = \sum_m w_m S_m`, then normalise the **mixed** graph,
    :math:`\tilde S = D^{-1/2} S D^{-1/2}` with its row degree. Gradient reaches every
    :math:`E_m` and ``weights``; no n x n tensor is formed (chunked top-k). Row and column 0
    (RecBole's padding item) are left empty, as in :func:`item_knn_graph`.

    Args:
        embeddings: list of float tensors (n_items, d_m), row 0 = padding.
        k: neighbours per item and modality.
        weights: float tensor (M,) of mixing weights, or ``None`` for one modality (weight 1).

    Returns:
        coalesced sparse float32 tensor, n_items x n_items, whose values carry gradient.
    """
    if weights is None and len(embeddings) != 1:
        raise ValueError(f"learned_item_graph: {len(embeddings)} modalities need mixing weights")
    n_items = embeddings[0].shape[0]
    rows, cols, values = [], [], []
    for index, matrix in enumerate(embeddings):
        row, col, value = knn_edges(matrix[1:], k, budget_elements)
        rows.append(row + 1)
        cols.append(col + 1)
        values.append(value if weights is None else weights[index] * value)
    rows, cols, values = torch.cat(rows), torch.cat(cols), torch.cat(values)
    values = symmetric_edge_weights(rows, cols, values, n_items)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_items, n_items)).coalesce()


def elementwise_max(graphs):
    """The entry-wise maximum of sparse (n x m) graphs over the union of their stored entries
    (an entry stored in one graph only keeps its value): SMORE's max-pooled fusion graph."""
    graphs = [graph.coalesce() for graph in graphs]
    n_rows, n_cols = graphs[0].shape
    indices = torch.cat([graph.indices() for graph in graphs], dim=1)
    values = torch.cat([graph.values() for graph in graphs])
    keys, slot = torch.unique(indices[0] * n_cols + indices[1], return_inverse=True)
    pooled = torch.full((len(keys),), float("-inf"), dtype=values.dtype, device=values.device)
    pooled = pooled.scatter_reduce(0, slot, values, reduce="amax")
    return torch.sparse_coo_tensor(torch.stack([keys // n_cols, keys % n_cols]), pooled, (n_rows, n_cols)).coalesce()


def combine_graphs(graphs, coefficients):
    r""":math:`\sum_i c_i G_i` of sparse (n x n) graphs of one shape, differentiable in the
    coefficients (floats or scalar tensors) and in the graphs' values.

    Returns:
        coalesced sparse tensor, n x n.
    """
    indices = torch.cat([graph.indices() for graph in graphs], dim=1)
    values = torch.cat([coefficient * graph.values() for graph, coefficient in zip(graphs, coefficients)])
    return torch.sparse_coo_tensor(indices, values, graphs[0].shape).coalesce()


def user_cooccurrence_neighbours(inter_matrix, top_k=200, budget_elements=2 ** 26):
    r"""Each user's ``top_k`` co-interaction neighbours (DRAGON's user–user graph).

    The co-occurrence count of users u ≠ v is :math:`C_{uv} = |\mathcal N_u \cap \mathcal N_v|`
    (``C = A Aᵀ`` of the binary train matrix). Rows of C are formed in chunks of
    ``budget_elements // n_users`` users (dense chunk x U at a time, never U x U) and reduced
    to their top-k; pairs with no shared item are not neighbours.

    Args:
        inter_matrix: scipy sparse (U x I) train interactions.
        top_k: neighbours kept per user (MMRec stores 200).

    Returns:
        (neighbours, counts): (U, k') int64 and float32 tensors, k' = min(top_k, U - 1),
        each row sorted by decreasing count; missing neighbours have index 0 and count 0.
    """
    binary = (inter_matrix.tocsr() > 0).astype(np.float32)
    n_users = binary.shape[0]
    k = max(0, min(int(top_k), n_users - 1))
    transposed = binary.T.tocsr()
    chunk = _row_chunk(n_users, budget_elements)
    neighbours, counts = [], []
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        block = torch.from_numpy((binary[start:stop] @ transposed).toarray())
        block[torch.arange(stop - start), torch.arange(start, stop)] = 0.0  # no self loops
        top = torch.topk(block, k, dim=1)
        neighbours.append(torch.where(top.values > 0, top.indices, torch.zeros_like(top.indices)))
        counts.append(top.values)
    return torch.cat(neighbours), torch.cat(counts)


class UserGraphSampler:
    r"""DRAGON's user–user graph, resampled each epoch (MMRec ``DRAGON.topk_sample``).

    Stores every user's top-``stored`` co-interaction neighbours with their counts
    (:func:`user_cooccurrence_neighbours`). :meth:`sample` draws ``k`` of them per user
    without replacement with probability :math:`\mathrm{softmax}(C_{u\cdot})` (Gumbel top-k,
    one vectorised draw for all users) and weights the drawn neighbours by the softmax of
    their counts, so each row with neighbours sums to 1; a user with fewer than ``k``
    neighbours keeps all of them, a user with none has an empty row. MMRec takes the first
    k of the sorted list and pads short rows by repeating neighbours; the softmax over counts
    makes high-count neighbours dominate either way.
    """

    def __init__(self, inter_matrix, k=40, stored=200, device="cpu"):
        if k < 1:
            raise ConfigError(f"user graph k must be positive, got {k}")
        neighbours, counts = user_cooccurrence_neighbours(inter_matrix, max(stored, k))
        self.neighbours = neighbours.to(device)
        self.logits = counts.to(device).masked_fill(counts.to(device) <= 0, float("-inf"))
        self.k = min(k, self.neighbours.shape[1])
        self.n_users = self.neighbours.shape[0]

    def top_k(self, pad=False, generator=None):
        r"""Every user's top-``k`` neighbours by co-interaction count, weighted by the softmax of
        their counts (MMRec's ``topk_sample`` of DRAGON and DualGNN, without redrawing): sparse
        (U x U) float32, row-stochastic where a user has neighbours, an empty row where not.

        A user with 0 < n < k neighbours keeps its n, weights :math:`\mathrm{softmax}(c_{1..n})`;
        with ``pad`` (MMRec's padding) its list is filled to k entries first, each new entry a
        copy of an entry drawn uniformly from the list as it stands (so earlier copies can be
        copied again, a Pólya urn), and the softmax runs over the k entries: neighbour j gets
        :math:`m_j e^{c_j} / \sum_l m_l e^{c_l}` for its multiplicity :math:`m_j` — a random
        reweighting, redrawn at each call. The k - n draws are vectorised over users."""
        device = self.neighbours.device
        logits = self.logits[:, :self.k]  # rows are sorted by decreasing count
        slots = torch.arange(self.k, device=device).expand(self.n_users, self.k)
        if pad and self.k > 1:
            present = torch.isfinite(logits).sum(dim=1, keepdim=True)
            source = slots.clone()  # the original slot each entry copies
            for slot in range(1, self.k):
                drawn = (torch.rand(self.n_users, 1, generator=generator, device=device) * slot).long()
                fill = (slot >= present) & (present > 0)
                source[:, slot:slot + 1] = torch.where(fill, source.gather(1, drawn), source[:, slot:slot + 1])
            slots = source
        logits = logits.gather(1, slots)
        keep = torch.isfinite(logits)
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # all -inf row -> zeros
        columns = self.neighbours.gather(1, slots)
        rows = torch.arange(self.n_users, device=device).unsqueeze(1).expand_as(logits)
        indices = torch.stack([rows[keep], columns[keep]])
        return torch.sparse_coo_tensor(indices, weights[keep], (self.n_users, self.n_users)).coalesce()

    def sample(self, generator=None):
        """This epoch's user–user matrix: sparse (U x U) float32, row-stochastic where a user
        has neighbours."""
        device = self.neighbours.device
        if self.k == 0:
            return torch.sparse_coo_tensor(torch.zeros((2, 0), dtype=torch.long, device=device),
                                           torch.zeros(0, device=device), (self.n_users, self.n_users))
        uniform = torch.rand(self.logits.shape, generator=generator, device=device).clamp_(1e-20, 1.0)
        gumbel = -torch.log(-torch.log(uniform))
        drawn = torch.topk(self.logits + gumbel, self.k, dim=1).indices
        logits = torch.gather(self.logits, 1, drawn)
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # all -inf row -> zeros
        columns = torch.gather(self.neighbours, 1, drawn)
        keep = torch.isfinite(logits)
        rows = torch.arange(self.n_users, device=device).unsqueeze(1).expand_as(columns)
        indices = torch.stack([rows[keep], columns[keep]])
        return torch.sparse_coo_tensor(indices, weights[keep], (self.n_users, self.n_users)).coalesce()


def consistent_knn_neighbours(features, k, budget_elements=2 ** 26):
    r"""kNN item lists kept only where every modality agrees (DA-MRS's denoised item–item graphs).

    With :math:`S_m` the cosine-similarity matrix of modality m and :math:`\bar S_m` the mean of
    all its n² entries (self-similarities included), a pair (i, j) is *consistent* when
    :math:`S_m[i, j] \ge \bar S_m` for every m. Each row keeps, per modality, the
    :math:`\min(k, c_i)` consistent pairs of largest :math:`S_m[i, \cdot]`, :math:`c_i` = the
    number of consistent pairs of row i (so every modality keeps the same count; row i itself is
    consistent, its cosine being 1).

    The mean is :math:`\lVert \sum_i \hat f_i \rVert^2 / n^2` (no n x n matrix); the rows are
    scored in chunks of ``budget_elements // (M n)`` rows.

    Args:
        features: dict modality -> float tensor (n, d_m), the same n rows for every modality.
        k: neighbours per row at most.

    Returns:
        (rows, columns): dict modality -> int64 tensor (E,) each, E = Σ_i min(k, c_i), on the
        features' device.
    """
    names = sorted(features)
    n_rows = features[names[0]].shape[0]
    if not 1 <= k <= n_rows:
        raise ConfigError(f"knn k must lie in [1, {n_rows}], got {k}")
    units = {name: F.normalize(features[name].float(), dim=1) for name in names}
    means = {name: float(units[name].double().sum(0).square().sum() / n_rows ** 2) for name in names}
    chunk = _row_chunk(n_rows * len(names), budget_elements)
    rows, columns = [], {name: [] for name in names}
    for start in range(0, n_rows, chunk):
        sims = {name: units[name][start:start + chunk] @ units[name].T for name in names}
        consistent = torch.stack([sims[name] >= means[name] for name in names]).all(dim=0)
        kept = consistent.sum(dim=1).clamp_max(k)
        take = torch.arange(k, device=kept.device) < kept[:, None]  # (chunk x k): the first min(k, c_i)
        for name in names:
            top = torch.topk(sims[name].masked_fill_(~consistent, float("-inf")), k, dim=1).indices
            columns[name].append(top[take])
        rows.append((torch.arange(len(kept), device=kept.device) + start).repeat_interleave(kept))
        del sims, consistent
    rows = torch.cat(rows)
    return {name: rows for name in names}, {name: torch.cat(columns[name]) for name in names}


def consistent_knn_graphs(features, k, cache_dir=None, budget_elements=2 ** 26):
    r"""DA-MRS's denoised item–item graph of each modality (Xu et al., KDD 2024; MMRec ``DAMRS``).

    The edges of :func:`consistent_knn_neighbours`, weight 1, normalised with the **row** degree
    on both sides, :math:`\tilde S_{ij} = 1/\sqrt{d_i d_j}` (MMRec's
    ``compute_normalized_laplacian``). Row and column 0 (RecBole's padding item) are left empty;
    each graph is cached in ``cache_dir`` as :func:`item_knn_graph` caches its graphs.

    Args:
        features: dict modality -> float tensor (n_items, d_m), row 0 = padding.
        k: neighbours per item at most.

    Returns:
        dict modality -> sparse float32 tensor, n_items x n_items, on the features' device.
    """
    names = sorted(features)
    device = features[names[0]].device
    n_items = features[names[0]].shape[0]
    digests = {name: tensor_digest(features[name]) for name in names}
    built = {}

    def build(name):
        if not built:
            rows, columns = consistent_knn_neighbours({m: features[m][1:] for m in names}, k, budget_elements)
            for m in names:
                ones = torch.ones(len(rows[m]), device=device)
                values = symmetric_edge_weights(rows[m] + 1, columns[m] + 1, ones, n_items)
                built[m] = torch.sparse_coo_tensor(torch.stack([rows[m] + 1, columns[m] + 1]), values,
                                                   (n_items, n_items))
        return built[name]

    return {name: cached_graph(cache_dir, "consistent_knn", {"k": int(k), "modality": name, "digests": digests},
                               n_items, lambda name=name: build(name)).to(device) for name in names}


def cooccurrence_item_graph(inter_matrix, top_k, min_count, cache_dir=None):
    r"""DA-MRS's item–item behaviour graph (its ``item_graph_dict_<top_k>.npy``, built offline by the
    authors' ``build_iib_graph.py``; here from the train split at start-up).

    Item i links to itself and to its ``top_k`` items of largest co-interaction count
    :math:`C_{ij} = |\mathcal N_i \cap \mathcal N_j|` (i ≠ j, users in common), among those with
    :math:`C_{ij} \ge` ``min_count``; the edges have weight 1 (the reference stores the counts in
    its file but builds the graph from the indices alone) and are normalised with the row degree
    on both sides, :math:`1/\sqrt{d_i d_j}`. Padding item 0 (no interactions) has an empty row.
    Cached in ``cache_dir`` under the parameters and a hash of the train edges.

    Args:
        inter_matrix: scipy sparse (U x I) train interactions.

    Returns:
        sparse float32 tensor, I x I (CPU).
    """
    n_items = inter_matrix.shape[1]
    users, items = interaction_edges(inter_matrix)

    def build():
        neighbours, counts = user_cooccurrence_neighbours(inter_matrix.T, top_k)
        keep = counts >= min_count
        rows = torch.arange(n_items).unsqueeze(1).expand_as(neighbours)[keep]
        loops = torch.arange(1, n_items)
        rows, columns = torch.cat([loops, rows]), torch.cat([loops, neighbours[keep]])
        values = symmetric_edge_weights(rows, columns, torch.ones(len(rows)), n_items)
        return torch.sparse_coo_tensor(torch.stack([rows, columns]), values, (n_items, n_items))

    key = {"top_k": int(top_k), "min_count": float(min_count), "edges": tensor_digest(torch.stack([users, items])),
           "shape": list(inter_matrix.shape)}
    return cached_graph(cache_dir, "cooccurrence", key, n_items, build)
