"""Stage 4: one resumable training loop, atomic checkpoints, and the SFT and GRPO stages that run through it."""
