"""The built-in tiny world: backbones and data small enough for a laptop CPU."""
