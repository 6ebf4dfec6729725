"""Featurisers: per-conn flow features, temporal flow graphs, token streams, modality inputs."""
