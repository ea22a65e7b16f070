"""easytune_lab.motion: the HumanML3D motion representation.

* :mod:`.quaternion`: quaternion / rotation-matrix / 6-D helpers for numpy and torch.
* :mod:`.skeleton`: the t2m (22 joints) and KIT (21 joints) skeletons, forward and inverse kinematics.
* :mod:`.features`: joints <-> the HumanML3D 263-d (KIT 251-d) feature vectors.
"""

from .features import (
    ProcessedMotion,
    feature_layout,
    joints_num_for_dim,
    joints_to_features,
    process_joints,
    recover_from_ric,
    recover_from_rot,
    recover_root_rot_pos,
)
from .skeleton import KIT, T2M, Skeleton, facing_direction, forward_kinematics, get_skeleton, inverse_kinematics

__all__ = [
    "KIT",
    "T2M",
    "Skeleton",
    "facing_direction",
    "forward_kinematics",
    "get_skeleton",
    "inverse_kinematics",
    "ProcessedMotion",
    "feature_layout",
    "joints_num_for_dim",
    "joints_to_features",
    "process_joints",
    "recover_from_ric",
    "recover_from_rot",
    "recover_root_rot_pos",
]
