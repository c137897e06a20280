"""Launch helpers for GKE clusters of TPUs and GPUs (XPK)."""
