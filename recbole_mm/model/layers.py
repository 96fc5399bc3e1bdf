"""Layers shared by the plugin's models, and the DCT of item-feature matrices (LIRDRec)."""
import warnings

import numpy as np
import torch
import torch.nn as nn
from scipy import fft

from recbole_mm.errors import ConfigError
from recbole_mm.options import DCT_MODES  # the keys of _DCT_TRANSFORMS below

try:  # optional extra `scatter`; the native fallback gives the same result
    import torch_scatter
except ImportError:  # pragma: no cover - depends on the environment
    torch_scatter = None


def propagate(adjacency, embeddings, n_layers, combine="mean"):
    r"""LightGCN propagation :math:`E^{(l+1)} = \hat A E^{(l)}` on a sparse adjacency.

    Args:
        adjacency: sparse (N x N) normalised adjacency, or a :class:`FrozenSparse` of one.
        embeddings: dense (N x d) layer-0 embeddings.
        n_layers: number of propagation steps L.
        combine: ``"mean"`` (LightGCN, FREEDOM: mean of layers 0..L), ``"sum"`` (LIRDRec: sum
            of layers 0..L) or ``"last"`` (layer L only).

    Returns:
        dense (N x d) tensor.
    """
    if combine not in ("mean", "sum", "last"):
        raise ValueError(f"combine must be 'mean', 'sum' or 'last', got {combine!r}")
    product = adjacency.mm if isinstance(adjacency, FrozenSparse) else lambda x: torch.sparse.mm(adjacency, x)
    if combine == "sum":  # a running sum: the same additions as stacking, without the (L+1) copies
        layer = total = embeddings
        for _ in range(n_layers):
            layer = product(layer)
            total = total + layer
        return total
    layers = [embeddings]
    for _ in range(n_layers):
        layers.append(product(layers[-1]))
    if combine == "last":
        return layers[-1]
    return torch.stack(layers, dim=0).mean(dim=0)


class _FrozenSparseProduct(torch.autograd.Function):
    """``A @ X`` for a fixed sparse A; the gradient ``Aᵀ G`` uses a stored CSR copy of Aᵀ."""

    @staticmethod
    def forward(ctx, dense, frozen):
        ctx.frozen = frozen
        return torch.sparse.mm(frozen.matrix, dense)

    @staticmethod
    def backward(ctx, grad):
        return torch.sparse.mm(ctx.frozen.transposed, grad), None


class FrozenSparse:
    r"""A fixed sparse (n x m) matrix A (a graph that is not learned) for products :math:`A X`
    that back-propagate into the dense X only.

    ``torch.sparse.mm`` on a COO matrix transposes (and sorts) A again in every backward pass;
    here A and :math:`A^\top` are stored once in CSR (one copy when ``symmetric``, e.g. a
    symmetric-normalised user–item adjacency), so forward and backward are one CSR product each.
    The values are those of A: same products, same gradients.

    Args:
        matrix: sparse COO (n x m) tensor.
        symmetric: A equals :math:`A^\top` (not checked).
    """

    def __init__(self, matrix, symmetric=False):
        matrix = matrix.coalesce()
        self.shape = matrix.shape
        with warnings.catch_warnings():  # torch's "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.matrix = matrix.to_sparse_csr()
            self.transposed = self.matrix if symmetric else matrix.t().coalesce().to_sparse_csr()

    @classmethod
    def from_csr(cls, matrix, transposed):
        """From A and :math:`A^\top`, both already CSR (:class:`DroppedEdges`)."""
        frozen = cls.__new__(cls)
        frozen.shape, frozen.matrix, frozen.transposed = matrix.shape, matrix, transposed
        return frozen

    def mm(self, dense):
        """:math:`A X` for a dense (m x d) X, differentiable in X; (n x d)."""
        return _FrozenSparseProduct.apply(dense, self)

    def to_dense(self):
        return self.matrix.to_dense()

    def _nnz(self):
        """Stored entries of A (as a sparse tensor's ``_nnz``)."""
        return self.matrix._nnz()

    def __deepcopy__(self, memo):
        """Shared, not copied: the matrix is never changed in place (and torch cannot deep-copy
        a CSR tensor), so a copied model may use the same one."""
        return self


class _SparseDenseProduct(torch.autograd.Function):
    """``A @ X`` for a sparse A given by (indices, values), differentiable in the values without
    the dense (n x m) gradient that ``torch.sparse.mm`` forms for a sparse argument."""

    @staticmethod
    def forward(ctx, indices, values, dense, n_rows, chunk_elements):
        ctx.save_for_backward(indices, values, dense)
        ctx.n_rows, ctx.chunk_elements = n_rows, chunk_elements
        matrix = torch.sparse_coo_tensor(indices, values, (n_rows, dense.shape[0]), is_coalesced=True)
        return torch.sparse.mm(matrix, dense)

    @staticmethod
    def backward(ctx, grad):
        indices, values, dense = ctx.saved_tensors
        grad_values = grad_dense = None
        if ctx.needs_input_grad[1]:  # dL/dA_rc = <dL/dY_r, X_c>, per edge, a chunk of edges at a time
            rows, cols = indices
            step = max(1, ctx.chunk_elements // max(dense.shape[1], 1))
            grad_values = torch.cat([
                (grad[rows[start:start + step]] * dense[cols[start:start + step]]).sum(dim=1)
                for start in range(0, len(values), step)
            ]) if len(values) else torch.zeros_like(values)
        if ctx.needs_input_grad[2]:
            transposed = torch.sparse_coo_tensor(indices.flip(0), values, (dense.shape[0], ctx.n_rows))
            grad_dense = torch.sparse.mm(transposed, grad)
        return None, grad_values, grad_dense, None, None


def sparse_dense_mm(adjacency, dense, chunk_elements=2 ** 22):
    r""":math:`A X` for a sparse (n x m) A whose **values** may carry gradient (a learned graph)
    and a dense (m x d) X.

    ``torch.sparse.mm`` back-propagates into a sparse argument through the dense (n x m)
    product :math:`G X^\top`, then masks it: an items x items tensor for an item graph. Here
    each edge's gradient :math:`\langle G_r, X_c \rangle` is computed directly, ``chunk_elements``
    (edges x d) at a time. Without gradient on the values this is ``torch.sparse.mm``.

    Args:
        adjacency: coalesced sparse tensor (n x m).
        dense: (m x d) tensor.

    Returns:
        dense (n x d) tensor.
    """
    values = adjacency.values()
    if not values.requires_grad:
        return torch.sparse.mm(adjacency, dense)
    return _SparseDenseProduct.apply(adjacency.indices(), values, dense, adjacency.shape[0], chunk_elements)


def _csr_rows(rows, n_rows):
    """CSR row pointers (n_rows + 1,) of sorted row indices (E,)."""
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class DroppedEdges:
    r"""Sub-matrices of a fixed sparse (n x m) matrix A that keep some of its stored entries
    (edge dropout drawn per batch: SelfCF), as :class:`FrozenSparse`, without sorting.

    ``FrozenSparse`` of a masked COO matrix sorts it twice (A and :math:`A^\top`); here A's
    entries are sorted by row once and by column once, a mask keeps both orders sorted, and the
    two CSR matrices follow from row counts (a third of a SelfCF step was the two sorts).

    Args:
        matrix: sparse COO (n x m) tensor.
    """

    def __init__(self, matrix):
        matrix = matrix.coalesce()
        self.shape = tuple(matrix.shape)
        self.rows, self.columns = matrix.indices()
        self.values = matrix.values()
        self.by_column = torch.argsort(self.columns * self.shape[0] + self.rows)

    def frozen(self, keep, scale=1.0):
        """A with the entries where ``keep`` (bool (E,), in coalesced order) holds, times ``scale``."""
        values = self.values * scale
        transposed_order = self.by_column[keep[self.by_column]]
        n_rows, n_columns = self.shape
        with warnings.catch_warnings():  # torch's "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            matrix = torch.sparse_csr_tensor(_csr_rows(self.rows[keep], n_rows), self.columns[keep], values[keep],
                                             self.shape, check_invariants=False)
            transposed = torch.sparse_csr_tensor(_csr_rows(self.columns[transposed_order], n_columns),
                                                 self.rows[transposed_order], values[transposed_order],
                                                 (n_columns, n_rows), check_invariants=False)
        return FrozenSparse.from_csr(matrix, transposed)

    def __deepcopy__(self, memo):
        """Shared, not copied: never changed in place."""
        return self


class EdgeGraph:
    r"""A fixed set of E directed edges :math:`s \to t` over N nodes, for message passing whose
    per-edge values carry gradient (attention, learned edge weights): GRCN's convolutions.

    Gather–multiply–scatter (``index_select``, ``*``, ``index_add_``) moves three (E x d)
    tensors each way and ``index_add_``'s backward is another gather; here a message pass is
    one CSR product (SpMM) forward and one backward, and a per-edge dot product
    :math:`a_t^\top b_s` is a sampled dense product (SDDMM, ``torch.sparse.sampled_addmm``):
    no (E x d) tensor is formed (the edges are stored sorted by target and by source once).
    Values and results are in the order of the edges given.

    Args:
        sources, targets: int64 (E,) edge endpoints, each pair at most once.
        n_nodes: N.
    """

    def __init__(self, sources, targets, n_nodes):
        self.sources, self.targets, self.n_nodes = sources, targets, n_nodes
        self.by_target = torch.argsort(targets * n_nodes + sources)
        self.by_source = torch.argsort(sources * n_nodes + targets)
        self.from_target_order = torch.argsort(self.by_target)
        self.target_pointers = _csr_rows(targets[self.by_target], n_nodes)
        self.target_columns = sources[self.by_target]
        self.source_pointers = _csr_rows(sources[self.by_source], n_nodes)
        self.source_columns = targets[self.by_source]

    def matrix(self, values, transposed=False):
        r"""The (N x N) CSR matrix :math:`A_{t,s} = v_{s \to t}` (its transpose when ``transposed``)
        of per-edge values (E,) in edge order; no gradient."""
        if transposed:
            pointers, columns, order = self.source_pointers, self.source_columns, self.by_source
        else:
            pointers, columns, order = self.target_pointers, self.target_columns, self.by_target
        with warnings.catch_warnings():  # torch's "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(pointers, columns, values.detach()[order], (self.n_nodes, self.n_nodes),
                                           check_invariants=False)

    def edge_dots(self, at_targets, at_sources):
        r""":math:`a_t^\top b_s` per edge s -> t: (N x d) a and b -> (E,) in edge order; no gradient."""
        pattern = self.matrix(at_targets.new_zeros(len(self.sources)))
        products = torch.sparse.sampled_addmm(pattern, at_targets.detach(), at_sources.detach().t(), beta=0.0)
        return products.values().index_select(0, self.from_target_order)

    def aggregate(self, nodes, weights):
        r""":math:`h_t = \sum_{s \to t} w_{s \to t}\, z_s`: (N x d) nodes z, (E,) weights w -> (N x d),
        differentiable in both."""
        return _EdgeAggregate.apply(nodes, weights, self)

    def dot(self, nodes):
        r""":math:`z_t^\top z_s` per edge: (N x d) nodes -> (E,), differentiable in z."""
        return _EdgeDot.apply(nodes, self)

    def __deepcopy__(self, memo):
        """Shared, not copied: never changed in place."""
        return self


class _EdgeAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, nodes, weights, graph):
        ctx.save_for_backward(nodes, weights)
        ctx.graph = graph
        return graph.matrix(weights) @ nodes

    @staticmethod
    def backward(ctx, grad):
        nodes, weights = ctx.saved_tensors
        graph = ctx.graph
        grad_nodes = grad_weights = None
        if ctx.needs_input_grad[0]:  # dL/dz_s = sum_t w_st g_t
            grad_nodes = graph.matrix(weights, transposed=True) @ grad
        if ctx.needs_input_grad[1]:  # dL/dw_st = <g_t, z_s>
            grad_weights = graph.edge_dots(grad, nodes)
        return grad_nodes, grad_weights, None


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, nodes, graph):
        ctx.save_for_backward(nodes)
        ctx.graph = graph
        return graph.edge_dots(nodes, nodes)

    @staticmethod
    def backward(ctx, grad):
        (nodes,) = ctx.saved_tensors
        graph = ctx.graph  # d/dz of sum_e g_e <z_t, z_s>: A_g z at the targets, A_gᵀ z at the sources
        return graph.matrix(grad) @ nodes + graph.matrix(grad, transposed=True) @ nodes, None


def register_table(module, name, tensor, trainable):
    """Register ``tensor`` on ``module`` as a parameter (trained) or a buffer (frozen: saved with
    the model, moved by ``.to(device)``, never seen by the optimiser). The frozen form reproduces
    the MMRec models that keep a table as a plain tensor attribute (MMGCN, MVGAE)."""
    if trainable:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


class MLP(nn.Sequential):
    """Feed-forward projection ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    The activation follows every hidden layer (not the output). ``last_bias=False`` drops the
    bias of the output layer (the MFT projection of LIRDRec has none).
    """

    _ACTIVATIONS = {"leakyrelu": nn.LeakyReLU, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}

    def __init__(self, dims, activation="leakyrelu", last_bias=True):
        if len(dims) < 2:
            raise ValueError(f"MLP needs at least input and output sizes, got {dims}")
        layers = []
        for index, (size_in, size_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = index == len(dims) - 2
            layers.append(nn.Linear(size_in, size_out, bias=last_bias or not last))
            if not last:
                layers.append(self._ACTIVATIONS[activation]())
        super().__init__(*layers)


def scatter_sum(src, index, dim_size):
    """Sum rows of ``src`` (E x d) into ``dim_size`` buckets given by ``index`` (E,).

    Uses torch-scatter when installed, ``index_add_`` otherwise.
    """
    if torch_scatter is not None:
        return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce="sum")
    out = torch.zeros((dim_size,) + tuple(src.shape[1:]), dtype=src.dtype, device=src.device)
    return out.index_add_(0, index, src)


def scatter_mean(src, index, dim_size):
    """Mean of the rows of ``src`` per bucket; empty buckets give zeros."""
    total = scatter_sum(src, index, dim_size)
    count = torch.bincount(index, minlength=dim_size).clamp_min(1).to(src.dtype)
    return total / count.view(-1, *([1] * (src.dim() - 1)))


def scatter_max(src, index, dim_size):
    """Maximum of the rows of ``src`` (E x ...) per bucket of ``index`` (E,), (dim_size x ...);
    empty buckets give zeros (torch-scatter's convention).

    Uses torch-scatter when installed, ``scatter_reduce(amax)`` otherwise.
    """
    if torch_scatter is not None:
        return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce="max")
    out = torch.zeros((dim_size,) + tuple(src.shape[1:]), dtype=src.dtype, device=src.device)
    expanded = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    return out.scatter_reduce(0, expanded, src, reduce="amax", include_self=False)


def scatter_softmax(src, index, dim_size):
    r"""Softmax of ``src`` (E,) or (E x h) over the entries that share a bucket of ``index``
    (E,): :math:`\alpha_e = \exp(s_e) / \sum_{e': index_{e'} = index_e} \exp(s_{e'})`, the
    per-edge attention normalisation of GAT-style convolutions (PyG's ``softmax``: the bucket
    maximum, detached, is subtracted for stability; 1e-16 guards the denominator).

    Returns:
        tensor shaped like ``src``.
    """
    shifted = src - scatter_max(src.detach(), index, dim_size)[index]
    exp = shifted.exp()
    return exp / (scatter_sum(exp, index, dim_size)[index] + 1e-16)


class ModalityGCN(nn.Module):
    r"""One modality branch of DRAGON (and VLIF): a GCN over the user–item graph whose item
    nodes start from the modality's features.

    Item layer 0: :math:`\mathrm{MLP}(x_i)` (``feature_dim -> 4d -> d``, LeakyReLU); user
    layer 0: a free preference vector :math:`p_u \in \mathbb R^d`; both L2-normalised per
    row, then :math:`\sum_{l=0}^{L} \hat A^l X` (VLIF Eq. 1–2; MMRec's ``x + h_1 + h_2``).

    Args:
        n_users: U.
        feature_dim: width of the modality's item features.
        embedding_dim: d.
        n_layers: L.
    """

    def __init__(self, n_users, feature_dim, embedding_dim, n_layers=2):
        super().__init__()
        self.n_layers = n_layers
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, embedding_dim)))
        self.mlp = MLP([feature_dim, 4 * embedding_dim, embedding_dim])

    def forward(self, adjacency, item_features):
        """(U + I) x d node representations from (I x feature_dim) item features."""
        nodes = torch.cat([self.preference, self.mlp(item_features)], dim=0)
        nodes = nn.functional.normalize(nodes, dim=1)
        return propagate(adjacency, nodes, self.n_layers, combine="sum")


# ---------------------------------------------------------------------------- feature transforms
_DCT_TRANSFORMS = {
    "1d": (lambda a: fft.dct(a, type=2, norm="ortho", axis=1), lambda a: fft.idct(a, type=2, norm="ortho", axis=1)),
    "2d": (lambda a: fft.dctn(a, type=2, norm="ortho", axes=(0, 1)),
           lambda a: fft.idctn(a, type=2, norm="ortho", axes=(0, 1))),
    "none": (lambda a: a, lambda a: a),
}


def _dct_transform(matrix, mode, inverse):
    if mode not in _DCT_TRANSFORMS:
        raise ConfigError(f"dct_mode must be one of {DCT_MODES}, got {mode!r}")
    return _DCT_TRANSFORMS[mode][int(inverse)](np.asarray(matrix, dtype=np.float64)).astype(np.float32)


def dct_features(matrix, mode="1d"):
    """DCT of an (n_items x d) matrix; float32 array of the same shape (LIRDRec's multimodal
    transformation).

    ``mode``:

    - ``"1d"``: type-II orthonormal DCT along the feature axis of each item (each row
      separately): ``scipy.fft.dct(x, type=2, norm="ortho", axis=1)``. This is what LIRDRec's
      public code applies (``torch_dct.dct`` on the last dimension) and what produced the paper's
      numbers.
    - ``"2d"``: type-II orthonormal DCT over both axes (items x features), as the paper's text
      describes (``scipy.fft.dctn(..., axes=(0, 1))``): every output entry mixes all items, so the
      result depends on the catalogue and on the item order.
    - ``"none"``: no transform (the matrix is returned as float32).

    All three are orthonormal (:func:`inverse_dct_features` inverts them exactly).
    """
    return _dct_transform(matrix, mode, inverse=False)


def inverse_dct_features(matrix, mode="1d"):
    """Inverse of :func:`dct_features`."""
    return _dct_transform(matrix, mode, inverse=True)


# ---------------------------------------------------------------------------- layer-refined GCN
def row_cosine(x, y, y_norm=None, eps=1e-8):
    r"""Row-wise cosine :math:`\frac{x_r^\top y_r}{\max(\|x_r\|, \epsilon)\,\max(\|y_r\|, \epsilon)}`
    of two (N x d) tensors, ``F.cosine_similarity(x, y, dim=-1)``'s value (a zero row scores 0,
    with a zero gradient) in three passes over the (N x d) data instead of its six, forward and
    backward: the divisions are of N-vectors, not of the (N x d) rows. ``y_norm``: the clamped
    norms of ``y`` when the caller reuses them (LayerGCN's ego rows, once for all layers).

    Returns:
        (N,) tensor.
    """
    if y_norm is None:
        y_norm = clamped_row_norms(y, eps)
    return (x * y).sum(-1) / (clamped_row_norms(x, eps) * y_norm)


def clamped_row_norms(x, eps=1e-8):
    """:math:`\max(\|x_r\|, \epsilon)` of each row of an (N x d) tensor: (N,)."""
    return torch.linalg.vector_norm(x, dim=-1).clamp_min(eps)


def layer_refined_propagate(adjacency, ego, n_layers, include_ego=True):
    r"""LayerGCN's layer-refined propagation (Zhou et al., ICDE 2023; MMRec ``layergcn.py``),
    also COHESION's user–item GCN.

    Each layer propagates the previous (refined) layer and rescales every row by its cosine
    to the ego embedding:

    :math:`E^{(l)} = \mathrm{diag}\big(\cos(\hat A E^{(l-1)}, E^{(0)})\big)\, \hat A E^{(l-1)}`,
    the cosine taken row-wise (:func:`row_cosine`, ``F.cosine_similarity``'s value: a zero row
    scores 0).

    Args:
        adjacency: sparse (N x N) normalised adjacency, or a :class:`FrozenSparse` of one.
        ego: dense (N x d) layer-0 embeddings :math:`E^{(0)}`.
        n_layers: L.
        include_ego: ``True`` sums layers 0..L (COHESION), ``False`` layers 1..L (LayerGCN).

    Returns:
        dense (N x d) tensor (zeros when L = 0 and ``include_ego`` is False).
    """
    product = adjacency.mm if isinstance(adjacency, FrozenSparse) else lambda x: torch.sparse.mm(adjacency, x)
    layer = ego
    total = ego if include_ego else torch.zeros_like(ego)
    ego_norm = clamped_row_norms(ego)
    for _ in range(n_layers):
        layer = product(layer)
        layer = row_cosine(layer, ego, ego_norm).unsqueeze(1) * layer
        total = total + layer
    return total


# ---------------------------------------------------------------------------- perturbed propagation
def simgcl_perturb(embeddings, eps, noise):
    r"""SimGCL's embedding perturbation (Yu et al., SIGIR 2022), as MENTOR's graph task uses it:
    :math:`h + \epsilon\, \mathrm{sign}(h) \odot \frac{\Delta}{\|\Delta\|_2}` with
    :math:`\Delta \sim U[0, 1)` row-wise L2-normalised, so each row moves by ``eps`` into its own
    orthant.

    Args:
        embeddings: (N x d) tensor h.
        eps: :math:`\epsilon`, the norm of each row's offset.
        noise: (N x d) draw :math:`\Delta` (``torch.rand_like(h)``).
    """
    return embeddings + torch.sign(embeddings) * nn.functional.normalize(noise, dim=-1) * eps


def perturbed_propagate(adjacency, embeddings, n_layers, eps, draw_noise=torch.rand_like):
    r""":func:`propagate` with ``combine="sum"`` where every propagated layer is perturbed by
    :func:`simgcl_perturb` before it is summed and propagated further:
    :math:`E^{(l+1)} = \mathrm{perturb}(\hat A E^{(l)})`, output :math:`\sum_{l=0}^{L} E^{(l)}`
    (layer 0 unperturbed; MENTOR's noisy GCN copies).

    Args:
        adjacency: sparse (N x N) adjacency or :class:`FrozenSparse`.
        embeddings: dense (N x d) layer 0.
        n_layers: L.
        eps: offset norm of :func:`simgcl_perturb`.
        draw_noise: callable (N x d) tensor -> (N x d) noise of its shape (uniform by default).
    """
    product = adjacency.mm if isinstance(adjacency, FrozenSparse) else lambda x: torch.sparse.mm(adjacency, x)
    layer = total = embeddings
    for _ in range(n_layers):
        layer = product(layer)
        layer = simgcl_perturb(layer, eps, draw_noise(layer))
        total = total + layer
    return total
