"""Training, off the inference path: data splits, the model protocol, metrics, model directories."""
