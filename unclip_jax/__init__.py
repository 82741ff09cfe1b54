"""unclip_jax: unCLIP (DALL-E 2) in JAX/Flax.

Packages and their import layers: docs/architecture.md (checked by tests/test_architecture.py).
  diffusion/  Gaussian diffusion math, losses, respacing and `lax.scan` samplers (no model code)
  models/     linen modules (no diffusion code)
"""

from unclip_jax.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
