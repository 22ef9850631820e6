"""Source readers, one module per dataset format; ``type: NAME`` in a config = ``NAME.SOURCE``."""
