"""Shared, stage-free logic of the IEIW object-replacement family (paper section 3.2):
region selection and mask decoding (:mod:`.regions`), the patch gallery on disk (its build:
:mod:`.gallery`, with :mod:`.gallery_shards` and :mod:`.gallery_assemble`; its files:
:mod:`.gallery_layout`; its patches and embedder: :mod:`.gallery_patches`; reading it:
:mod:`.gallery_read`) and the weight-free Poisson blending backend (:mod:`.blend`). Stages and
the ``idd gallery`` command import these; they never import each other."""
