"""The analysis layer: sampling a trained flow and the studies (coordinates, ephemeral learning)."""
