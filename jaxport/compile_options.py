"""XLA options for `jax.jit(..., compiler_options=...)`, by how a program's calls are made."""

SINGLE_CALL = {"xla_gpu_enable_command_buffer": ""}
"""For a program whose every call is waited on before the next (one request at a time): no CUDA graphs. With them,
XLA's default, the host launches the whole program as a graph before its first kernel can start; launched kernel by
kernel, the GPU starts at once and the host stays ahead of it. LSG-BART-base's encoder at 16384 tokens on an H100:
0.3-0.5 ms less per synchronised call, the same back to back (bench/RESULTS.md). Only GPUs read the option; the
other backends accept it."""
