"""Cluster family (PACL stage 2): k-means pseudo-labels, the visual encoder feature cache, and the cluster report."""
