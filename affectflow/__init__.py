"""affectflow: emotion-aware visual pretraining pipeline (PACL, CTERNet, KCDP knowledge)."""

__version__ = "0.1.0"
