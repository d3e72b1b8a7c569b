"""gen-nvs: generative novel view synthesis in PyTorch."""

__version__ = "0.1.0"
