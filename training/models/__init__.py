"""Plain-PyTorch models: VideoDiT, VideoVAE, text encoders."""
