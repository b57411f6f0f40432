"""Stage 2: build the offline tiny Qwen2.5-VL, load any checkpoint with the paper's LoRA, tokenise conversations."""
