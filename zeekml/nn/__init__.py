"""Torch modules only, no I/O: the GNN, MoE and autoencoder models."""
