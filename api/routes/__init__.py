"""Routes, one module per resource family."""
