"""Model adapters (CLIP, aesthetics, GIQA, classical quality, inpainting, ...): stages import these."""
