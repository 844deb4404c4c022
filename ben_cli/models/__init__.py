"""BEN networks: the Swin encoder, the multi-view decoder and the BEN Base model."""
