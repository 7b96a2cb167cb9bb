"""The relay service: a blind store-and-forward router for sealed envelopes (DESIGN §6)."""
