from setuptools import find_packages, setup

setup(
    name="jax-ports",
    version="0.1.0",
    description="JAX/Flax ports of research seq2seq and language models, with PyTorch checkpoint conversion.",
    python_requires=">=3.11",
    packages=find_packages(include=["jaxport*", "t5_jax*", "sip_jax*", "backpack_jax*", "lsg_jax*",
                                    "flipped_jax*", "perceiver_jax*"]),
    py_modules=["train", "convert"],
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "transformers>=4.44",
        "ml-collections>=1.0",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # tensorflow-datasets imports it for builder code paths but does not declare it
        "safetensors>=0.4",
        "tensorboardX>=2.6",  # TensorBoard event files without installing TensorFlow
        "tqdm",
        "numpy",
    ],
    extras_require={
        # torch is only needed to read pytorch_model.bin files and for the reference models in tests.
        "torch": ["torch>=2.4"],
        # Pinned exactly: on CPU-only CI this resolves to a small CPU build; elsewhere PyPI's build.
        # FST sampling for SIP's pre-training data, as the original does it (OpenFst through pynini).
        "sip": ["pynini>=2.1.6"],
        # ROUGE of generated summaries, the metric the LSG paper and arxiv summarization report.
        "lsg": ["rouge-score"],
        # promptsource-style templates (Jinja, YAML) for FLIPPED; `datasets` reads its Hugging Face training mixture.
        "flipped": ["jinja2>=3", "pyyaml", "datasets"],
        "test": ["pytest>=8", "ruff>=0.6", "torch==2.13.0", "pynini>=2.1.6", "rouge-score", "nbformat", "nbclient",
                 "ipykernel", "jinja2>=3", "pyyaml"],
        "gpu": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
    },
)
