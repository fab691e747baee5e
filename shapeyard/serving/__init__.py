"""Serving: sampling from deployed models, and hot-loading the weight snapshots trainers write for them."""
