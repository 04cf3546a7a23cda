"""Networks: the Mamba-2 mixer (torch and CUDA paths), blocks, the DIMBA denoiser and the AR baseline."""
