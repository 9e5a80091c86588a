"""prag: Parametric RAG with a fused multi-document LoRA kernel.

The kernel package lives in `kernels/prag_kernels/`; `kernels/` itself is not a package, so it can never be
imported as `kernels` and shadow Hugging Face's package of that name, which transformers imports.
"""

import re
from pathlib import Path

from setuptools import setup

SUBPACKAGES = ["model", "pairs", "retrieval", "storage", "offline", "answer"]
VERSION = re.search(r'__version__ = "(.+)"', Path("prag_core/__init__.py").read_text()).group(1)

setup(
    name="prag",
    version=VERSION,
    description="Parametric RAG: per-document LoRA pairs applied by one fused Triton kernel",
    python_requires=">=3.10",
    packages=["prag_kernels", "prag_core", *(f"prag_core.{sub}" for sub in SUBPACKAGES)],
    package_dir={"prag_kernels": "kernels/prag_kernels", "prag_core": "prag_core"},
    package_data={"prag_core": ["data/*.jsonl", "data/*.safetensors"], "prag_kernels": ["dispatch_table.json"]},
    install_requires=[
        # torch is a lower bound only: an existing torch is never replaced.
        "torch>=2.9",
        "triton>=3.4",
        "transformers>=5.24",
        "safetensors>=0.8",
        "bm25s>=0.3.16",  # the sparse-matrix engine under BM25Index
        "faiss-cpu>=1.12",  # the dense index's exact and IVF search
        "gguf>=0.19",
        "accelerate>=1.15",
        "tqdm>=4.70",
        "sentence-transformers>=5.0",  # the dense half of the default hybrid retriever
    ],
    extras_require={
        "test": [
            "kernels>=0.19",  # Hugging Face's: tests/test_install.py checks nothing of ours shadows it
            "pytest>=9.0",
            "rank_bm25>=0.2.2",  # the reference BM25Index's scores are checked against
            "ruff>=0.15",
            "pytest-benchmark>=5.2",
            "ray[serve]>=2.40",
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "openai>=1.0",
        ],
        "ray": ["ray[serve]>=2.40"],  # prag build --ray, prag serve --ray
        "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
        "bench": ["pytest-benchmark>=5.2", "matplotlib>=3.8"],
    },
    entry_points={"console_scripts": ["prag=prag_core.cli:main"]},
)
