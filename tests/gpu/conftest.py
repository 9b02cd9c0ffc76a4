"""The GPU suite runs only where JAX has a GPU: `JAX_PLATFORMS=cuda python -m pytest -q tests/gpu` on the GPU
machine (the root conftest pins the default test run to 8 fake CPU devices). Elsewhere it is not collected."""
import jax

if jax.default_backend() != "gpu":
    collect_ignore_glob = ["test_*.py"]
