"""Client of GRM Cluster's public API (grm.v1.RewardService)."""
from .client import RewardClient, ScoreResult, SampleResult, ScoreError

__all__ = ["RewardClient", "ScoreResult", "SampleResult", "ScoreError"]
