"""Benchmarks: `python -m unclip_jax.bench NAME [options]`. Speed and memory targets are checked here,
never by timed unit tests. Each benchmark prints a table and, with --json, writes its numbers."""
