"""Reasoning SFT data: read, validate, format in the R1 chat format, tokenize, mask, batch."""
