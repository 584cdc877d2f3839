"""PACL family (PACL stage 3): the pretraining stage, its params, training job and outputs."""
