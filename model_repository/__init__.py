"""The Triton model repository: typed model definitions, the config renderer (one definition ->
a `cpu` and a `gpu` config), the python-backend models, and the writer that lays it all out."""
