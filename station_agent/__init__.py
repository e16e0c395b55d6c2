"""The station process: keeps the signed programme, plays it from local state, reports back."""
