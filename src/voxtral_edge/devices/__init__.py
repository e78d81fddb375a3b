"""Shipped device profiles: one TOML file per target, read by voxtral_edge.profiles."""
