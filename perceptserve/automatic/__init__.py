"""Automatic mask generation ("segment everything") as `SamAutomaticMaskGenerator` computes it,
for any SAM-like family whose encoder and decoder are served: the point grid and crops, the
filters, NMS and COCO RLE, independent of where the models run (Triton BLS, or tests' callables)."""
