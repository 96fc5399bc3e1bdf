"""Models: one file per model, named after it; shared code in abstract_recommender, layers, loss."""
from recbole_mm.model.abstract_recommender import MultiModalRecommender

__all__ = ["MultiModalRecommender"]
