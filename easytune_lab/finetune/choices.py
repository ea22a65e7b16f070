"""The choices of the fine-tuning options, importable without torch (the CLI builds its parser from them)."""

#: LoopConfig.gradient_at: per-step gradients at the live parameters, or at the trajectory's start (the authors')
GRADIENT_AT = ("live", "start")
#: LoopConfig.reward_scale: τ·cos (the reward model's learned scale) or the plain cosine (the authors')
REWARD_SCALES = ("tau", "unit")
#: FinetuneConfig.schedule_clock: what the LR schedule counts
SCHEDULE_CLOCKS = ("updates", "trajectories")
