"""ablate: AnimeGAN loss-weight ablations."""
__version__ = "0.1.0"
