"""Models: one file per model, named after it; shared code in abstract_recommender, layers, loss.

The plugin's model registry: :func:`recbole_mm.utils.get_model` finds exactly the models imported
here (one line per model, as RecBole-GNN's ``general_recommender/__init__.py``); a new model
file adds its import and its name in ``__all__``."""
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.bm3 import BM3
from recbole_mm.model.clipmlp import CLIPMLP
from recbole_mm.model.cohesion import COHESION
from recbole_mm.model.damrs import DAMRS
from recbole_mm.model.dragon import DRAGON
from recbole_mm.model.dualgnn import DualGNN
from recbole_mm.model.freedom import FREEDOM
from recbole_mm.model.grcn import GRCN
from recbole_mm.model.itemknncbf import ItemKNNCBF
from recbole_mm.model.lattice import LATTICE
from recbole_mm.model.layergcn import LayerGCN
from recbole_mm.model.lgmrec import LGMRec
from recbole_mm.model.lirdrec import LIRDRec
from recbole_mm.model.mentor import MENTOR
from recbole_mm.model.mgcn import MGCN
from recbole_mm.model.micro import MICRO
from recbole_mm.model.mmgcf import MMGCF
from recbole_mm.model.mmgcn import MMGCN
from recbole_mm.model.mvgae import MVGAE
from recbole_mm.model.nfvlm import NFVLM
from recbole_mm.model.pgl import PGL
from recbole_mm.model.selfcf import SelfCF
from recbole_mm.model.slmrec import SLMRec
from recbole_mm.model.smore import SMORE
from recbole_mm.model.vbpr import VBPR
from recbole_mm.model.vlif import VLIF

__all__ = [
    "MultiModalRecommender",
    "BM3",
    "CLIPMLP",
    "COHESION",
    "DAMRS",
    "DRAGON",
    "DualGNN",
    "FREEDOM",
    "GRCN",
    "ItemKNNCBF",
    "LATTICE",
    "LayerGCN",
    "LGMRec",
    "LIRDRec",
    "MENTOR",
    "MGCN",
    "MICRO",
    "MMGCF",
    "MMGCN",
    "MVGAE",
    "NFVLM",
    "PGL",
    "SelfCF",
    "SLMRec",
    "SMORE",
    "VBPR",
    "VLIF",
]
