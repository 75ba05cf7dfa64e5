"""Plain PyTorch building blocks (text encoders, volume decoders/encoders); no Lightning here."""
