"""HQ-SAM on the torch side: the official model's builders, strict checkpoint loading, and the
two modules we export (image encoder with the HQ fusion features, prompt decoder with runtime
flags)."""
