r"""SMORE: spectrum-based modality representation fusion graph convolutional network.

Ong & Khong, WSDM 2025, as MMRec implements it (``src/models/smore.py`` of enoche/MMRec,
contributed by the authors; author repository kennethorq/SMORE). MGCN's skeleton
(:class:`~recbole_mm.model.mgcn.MGCN`: the user–item view :math:`E_c`, the loss) with three
item–item views built in the frequency domain:

- **Spectral denoising and fusion** over the embedding axis (``rfft``, orthonormal), with
  learned complex filters :math:`w_v, w_t, w_f` (d/2 + 1 each):
  :math:`c_v = \mathcal F^{-1}(\mathcal F(P_v x_v) \odot w_v)`, :math:`c_t` likewise,
  :math:`c_f = \mathcal F^{-1}(\mathcal F(P_v x_v) \odot \mathcal F(P_t x_t) \odot w_f)`.
- **Gated item views** :math:`e_i \odot \sigma(\mathrm{Lin}_m(c_m))` for m ∈ {image, text,
  fusion}, ``n_layers`` steps on that view's frozen kNN graph (image: ``image_knn_k``, text:
  ``text_knn_k``, cosine weights, symmetric normalisation; fusion: the entry-wise maximum of
  the two, :func:`~recbole_mm.data.graphs.elementwise_max`); users :math:`R\,E_{m,I}`.
- **Modality-aware preference**: :math:`\mathrm{softmax}_{\text{features}}(q_v(E_f)) \odot E_v`
  and the same for text (q: Lin–tanh–Lin without bias, d -> d; the softmax runs over the
  embedding axis, as MMRec's); each view times its preference gate
  :math:`\mathrm{dropout}(\sigma(\mathrm{Lin}(E_c)))`; side :math:`E_s` = their mean.
- :math:`E = E_c + E_s`; loss as MGCN's (BPR, ½ Σ squared final rows / B, InfoNCE of side vs
  user–item view, τ 0.2, weight ``cl_loss``).
"""
import torch
import torch.nn as nn

from recbole_mm.data.graphs import elementwise_max
from recbole_mm.errors import ConfigError
from recbole_mm.model.layers import propagate
from recbole_mm.model.mgcn import MGCN, _gate

VIEWS = ("image", "text", "fusion")


def _query(dim):
    """``Lin(d -> d)``, tanh, ``Lin(d -> d)`` without bias."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim, bias=False))


def spectral_filter(rows, weight):
    r""":math:`\mathcal F^{-1}(\mathcal F(x) \odot w)` along the last axis: (N x d) real rows,
    (d/2 + 1) complex filter -> (N x d)."""
    return torch.fft.irfft(torch.fft.rfft(rows, dim=1, norm="ortho") * weight, n=rows.shape[1], dim=1, norm="ortho")


class SMORE(MGCN):
    one_modality_refusal = (
        "MMRec's SMORE multiplies the image and the text spectra to build its fusion view (on a one-modality "
        "folder its forward stops with an UnboundLocalError)")

    def setup_views(self, config):
        if sorted(self.modality_names) != ["image", "text"]:
            raise ConfigError(f"SMORE needs 'image' and 'text' modalities, got {self.modality_names}")
        d = self.embedding_size
        self.spectral_weights = nn.ParameterDict({
            view: nn.Parameter(torch.randn(1, d // 2 + 1, 2)) for view in VIEWS})
        self.view_gates = nn.ModuleDict({view: _gate(d) for view in VIEWS})
        self.preference_gates = nn.ModuleDict({view: _gate(d) for view in VIEWS})
        self.queries = nn.ModuleDict({name: _query(d) for name in ("image", "text")})
        self.preference_dropout = nn.Dropout(config["dropout_rate"])
        self.item_graphs = {name: self.item_knn_graph(config[f"{name}_knn_k"], {name: 1.0}, weighted=True)
                            for name in ("image", "text")}
        self.item_graphs["fusion"] = elementwise_max([self.item_graphs["image"], self.item_graphs["text"]])

    def spectral_views(self):
        """(I x d) filtered image, text and fused projections: dict view -> c_view."""
        image = self.projections["image"](self.features["image"])
        text = self.projections["text"](self.features["text"])
        weights = {view: torch.view_as_complex(self.spectral_weights[view]) for view in VIEWS}
        fused_spectrum = torch.fft.rfft(image, dim=1, norm="ortho") * torch.fft.rfft(text, dim=1, norm="ortho")
        fused = torch.fft.irfft(fused_spectrum * weights["fusion"], n=image.shape[1], dim=1, norm="ortho")
        return {"image": spectral_filter(image, weights["image"]), "text": spectral_filter(text, weights["text"]),
                "fusion": fused}

    def views(self):
        """(final E = E_c + E_s, side E_s, content E_c), each (U + I) x d, users first."""
        content = propagate(self.adjacency, torch.cat([self.user_embedding, self.item_id_embedding]),
                            self.n_ui_layers, combine="mean")
        modal = {}
        for view, filtered in self.spectral_views().items():
            items = propagate(self.item_graphs[view], self.item_id_embedding * self.view_gates[view](filtered),
                              self.n_layers, combine="last")
            modal[view] = torch.cat([torch.sparse.mm(self.user_item_block, items), items])
        parts = [torch.softmax(self.queries[name](modal["fusion"]), dim=-1) * modal[name] for name in ("image", "text")]
        parts.append(modal["fusion"])
        side = torch.stack([self.preference_dropout(self.preference_gates[view](content)) * part
                            for view, part in zip(VIEWS, parts)]).mean(dim=0)
        return content + side, side, content
