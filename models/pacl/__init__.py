"""PACL models: the two-tower model, the partitioned losses and the training loop with its sampler,
schedule and augmentation."""
