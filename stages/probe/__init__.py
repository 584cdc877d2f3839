"""Probe family: the labelled evaluation set (probe_ingest) and the downstream evaluation of the
encoder before and after PACL."""
