"""alignscope training on PyTorch: the objectives, data order and checkpoint layout of alignscope, on HF transformers GPT-2 with torchrun (DDP or FSDP)."""
