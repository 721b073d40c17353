"""Experiments: the thesis's tables as rows of commands, and the RandAugment N x M search."""
