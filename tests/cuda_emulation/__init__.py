"""CPU emulation of CUDA kernels for the tests (see README.md)."""
