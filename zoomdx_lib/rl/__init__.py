"""Stage 3: the zoom tool, multi-turn rollouts, the paper's rewards (Eq. 1-3) and GRPO advantage estimators."""
