"""motionserve: a self-hosted server for video diffusion models that speaks the fal model API."""

__version__ = "0.1.0"
