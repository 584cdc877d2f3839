"""CTERNet models: backbone, SMAD attention, class-wise pooling, the network, its training and checkpoints."""
