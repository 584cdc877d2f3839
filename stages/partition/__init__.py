"""Partition family (PACL stage 1): the partition stage, its score statistics, figures, and the
views of its output (inspect, gallery, export)."""
