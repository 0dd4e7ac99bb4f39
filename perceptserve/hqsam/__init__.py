"""The SAM families on the torch side (HQ-SAM, plain SAM, MobileSAM; `families.py`): the official
models' builders, strict checkpoint loading, and the two modules we export (image encoder, with
HQ-SAM's fusion features; prompt decoder with runtime mask selection)."""
