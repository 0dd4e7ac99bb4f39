"""DatasetDM (Wu et al., 2023): a frozen Stable Diffusion 1.x plus the small perception decoders
(P-Decoders) that read its UNet's features; our export-friendly implementation of the parts."""
