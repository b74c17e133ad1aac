"""Running programs past one device: the launcher of context-parallel ranks (torch.distributed)."""
