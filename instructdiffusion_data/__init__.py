"""instructdiffusion-data: builds the InstructDiffusion training triplets (source, instruction, target)."""

__version__ = "0.1.0"
