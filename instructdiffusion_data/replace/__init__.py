"""Shared, stage-free logic of the IEIW object-replacement family (paper section 3.2):
region selection and mask decoding (:mod:`.regions`), the patch gallery on disk (:mod:`.gallery`)
and the weight-free Poisson blending backend (:mod:`.blend`). Stages and the ``idd gallery``
command import these; they never import each other."""
