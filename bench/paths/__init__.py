"""One module per benchmark path; each runs in its own process (see bench/throughput.py)."""
