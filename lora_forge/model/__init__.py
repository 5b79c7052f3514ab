"""What we do to a loaded Stable Diffusion model object (family, LoRA targets, encoding, noise)."""
