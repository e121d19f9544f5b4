"""Plain-PyTorch training: policy, loop, checkpoints, and the train task function."""
