"""Test infrastructure: synthetic wheels (wheels), a PyTorch-like local index (index_server), real uv projects (projects)."""
