"""Knowledge family (KCDP): captions, triplets and knowledge text, and their views."""
