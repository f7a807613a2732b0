"""warmd's benchmark (not shipped with warmd): one module per measured condition; see run.py."""
