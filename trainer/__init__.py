"""Streaming InstructPix2Pix-style trainer for the shards this engine writes (docs/trainer.md).

Three parts: :mod:`trainer.data` (WebDataset streams per dataset, weighted mixing, paired
augmentation), :mod:`trainer.model` (SD-1.5 components, conv_in surgery, EMA, tiny test models) and
:mod:`trainer.loop` (the accelerate training loop). Entry points: ``idd train CONFIG`` and
``accelerate launch -m trainer.train CONFIG``.
"""
