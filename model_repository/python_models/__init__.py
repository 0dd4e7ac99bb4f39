"""Python-backend models. The writer copies each file to `<repo>/<model>/1/model.py`; they import
`triton_python_backend_utils`, which only exists inside Triton's python stub."""
