"""Stages, one module each; ``type: NAME`` in a pipeline config = ``NAME.STAGE``.
A stage imports models and renderers, never another stage."""
