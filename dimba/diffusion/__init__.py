"""Noise schedules, the learned time warp, samplers (DDPM/DDIM) and the sampling loop.

Nothing here owns network parameters, and the network knows nothing of alphas.
"""
