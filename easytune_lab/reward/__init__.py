"""easytune_lab.reward: the retrieval reward R(x, c), the noise-aware R(x_t, t, c), and SPL refinement.

``load_reward(run_dir, device)`` gives a trained :class:`Reward`; ``Reward.score(x, texts, lengths, t, decode)``
is the differentiable reward the fine-tuning loop calls.
"""

from .retrieval import Reward, RewardModelConfig, load_reward, save_reward

__all__ = ["Reward", "RewardModelConfig", "load_reward", "save_reward"]
