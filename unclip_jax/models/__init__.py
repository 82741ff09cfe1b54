"""Linen modules: CLIP towers and tokenizer, the diffusion prior, the decoder and super-resolution UNets.

Models are pure functions of (params, inputs); they never import `unclip_jax.diffusion` or the trainers.
"""
