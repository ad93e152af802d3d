"""Client of GRM Cluster's public API (grm.v1.RewardService).

`RewardClient` (blocking) and `grm_client.aio.AsyncRewardClient` (asyncio); reward functions
for trainers in `grm_client.trl` (TRL's GRPOTrainer) and `grm_client.verl` (verl's reward
loop), imported on demand so that this package needs neither torch nor the trainers.
"""
from .client import (Group, GroupResult, RewardClient, SampleResult, ScoreError, ScoreResult,
                     build_request)

__all__ = ["RewardClient", "ScoreResult", "SampleResult", "ScoreError", "Group", "GroupResult", "build_request"]
