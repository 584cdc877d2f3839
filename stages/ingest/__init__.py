"""Ingest family: the ingest stage (posts, labelled image folders) and its listing, validation and decoding helpers."""
