"""make bench: palaver measured against the bare upstream (python -m bench.bench)."""
