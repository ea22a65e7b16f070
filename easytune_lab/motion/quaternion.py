"""Quaternion and rotation helpers shared by numpy and torch.

Conventions (those of HumanML3D's ``common/quaternion.py``):

* a quaternion is stored as ``(w, x, y, z)`` in the last axis and composes by the Hamilton product;
* ``qrot(q, v)`` is the active rotation ``q v q*`` of the vector ``v``;
* a rotation matrix acts on column vectors (``v' = R v``), so ``qrot(q, v) == quat_to_matrix(q) @ v``;
* the continuous 6-D representation (Zhou et al., CVPR 2019, "On the continuity of rotation
  representations") is the first two *columns* of the rotation matrix, concatenated ``[R[:, 0], R[:, 1]]``,
  and is mapped back by Gram–Schmidt.

Every function accepts numpy arrays or torch tensors (the result has the input's kind, dtype and device),
broadcasts over leading axes, and is differentiable in torch (no in-place writes into inputs).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

Array = Any  # np.ndarray | torch.Tensor

__all__ = [
    "is_torch",
    "stack",
    "cross",
    "norm",
    "qnormalize",
    "qmul",
    "qinv",
    "qrot",
    "qbetween",
    "qfix",
    "quat_about_y",
    "quat_from_axis_angle",
    "quat_to_matrix",
    "matrix_to_quat",
    "matrix_to_cont6d",
    "cont6d_to_matrix",
    "quat_to_cont6d",
    "cont6d_to_quat",
]


# --------------------------------------------------------------------------------------------------
# tiny backend layer: the few operations whose numpy and torch spellings differ
# --------------------------------------------------------------------------------------------------
def is_torch(x: Array) -> bool:
    """True for a torch tensor."""
    return isinstance(x, torch.Tensor)


def stack(parts: Sequence[Array], axis: int = -1) -> Array:
    """``np.stack`` or ``torch.stack``, chosen by the first part."""
    return torch.stack(list(parts), dim=axis) if is_torch(parts[0]) else np.stack(parts, axis=axis)


def cross(a: Array, b: Array) -> Array:
    """Cross product over the last axis (broadcasting)."""
    if is_torch(a) or is_torch(b):
        a, b = torch.broadcast_tensors(torch.as_tensor(a), torch.as_tensor(b))
        return torch.linalg.cross(a, b, dim=-1)
    return np.cross(a, b, axis=-1)


def norm(x: Array, keepdim: bool = True) -> Array:
    """Euclidean norm over the last axis."""
    if is_torch(x):
        return torch.linalg.vector_norm(x, dim=-1, keepdim=keepdim)
    return np.linalg.norm(x, axis=-1, keepdims=keepdim)


def _sqrt(x: Array) -> Array:
    return torch.sqrt(x) if is_torch(x) else np.sqrt(x)


def _dot(a: Array, b: Array) -> Array:
    """Dot product over the last axis, keeping it as size 1."""
    return (a * b).sum(-1, keepdim=True) if is_torch(a) else (a * b).sum(-1, keepdims=True)


def _where(cond: Array, a: Array, b: Array) -> Array:
    return torch.where(cond, a, b) if is_torch(a) else np.where(cond, a, b)


def _match(a: Array, b: Array) -> tuple[Array, Array]:
    """Both operands as torch tensors (on the tensor's dtype/device) if either is one, else unchanged."""
    if is_torch(a) and not is_torch(b):
        return a, _like(b, a)
    if is_torch(b) and not is_torch(a):
        return _like(a, b), b
    return a, b


def _like(x: Array, ref: Array) -> Array:
    """``x`` converted to the kind (and for torch the dtype/device) of ``ref``."""
    if is_torch(ref):
        return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------------
# quaternions
# --------------------------------------------------------------------------------------------------
def qnormalize(q: Array, eps: float = 1e-12) -> Array:
    """Scale each quaternion to unit norm."""
    n = norm(q)
    if is_torch(q):
        return q / n.clamp_min(eps)
    return q / np.maximum(n, eps)


def qmul(q: Array, r: Array) -> Array:
    """Hamilton product ``q r`` (apply ``r`` first, then ``q``), shapes broadcast over leading axes."""
    q, r = _match(q, r)
    w1, x1, y1, z1 = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    w2, x2, y2, z2 = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
    return stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )


def qinv(q: Array) -> Array:
    """Conjugate ``(w, -x, -y, -z)``: the inverse of a unit quaternion."""
    sign = np.array([1.0, -1.0, -1.0, -1.0])
    return q * (_like(sign, q) if is_torch(q) else sign.astype(np.result_type(q, np.float32)))


def qrot(q: Array, v: Array) -> Array:
    """Rotate vectors ``v`` (..., 3) by unit quaternions ``q`` (..., 4): ``v + 2 w (u×v) + 2 u×(u×v)``."""
    q, v = _match(q, v)
    u = q[..., 1:]
    w = q[..., :1]
    uv = cross(u, v)
    uuv = cross(u, uv)
    return v + 2.0 * (w * uv + uuv)


def qbetween(v0: Array, v1: Array, eps: float = 1e-9) -> Array:
    """Shortest-arc unit quaternion rotating direction ``v0`` onto direction ``v1``.

    HumanML3D's formula: ``q = normalise(|v0||v1| + v0·v1, v0 × v1)``. That formula is 0/0 when the
    vectors are opposite; there we return the half-turn about an axis perpendicular to ``v0``
    (any such axis is a valid answer), so the result is always a unit quaternion.
    """
    v0, v1 = _match(v0, v1)
    if is_torch(v0):
        v0, v1 = torch.broadcast_tensors(v0, v1)
    else:
        v0, v1 = np.broadcast_arrays(np.asarray(v0, dtype=np.float64), np.asarray(v1, dtype=np.float64))
    n = _sqrt(_dot(v0, v0) * _dot(v1, v1))
    w = n + _dot(v0, v1)
    c = cross(v0, v1)
    q = stack([w[..., 0], c[..., 0], c[..., 1], c[..., 2]], axis=-1)
    # opposite vectors: half-turn about (v0 × x̂) or, if v0 ∥ x̂, (v0 × ŷ)
    ex = _like(np.array([1.0, 0.0, 0.0]), v0)
    ey = _like(np.array([0.0, 1.0, 0.0]), v0)
    a1 = cross(v0, ex)
    a2 = cross(v0, ey)
    axis = _where(norm(a1) > 1e-6 * norm(v0), a1, a2)
    zero = w[..., 0] * 0.0
    half_turn = stack([zero, axis[..., 0], axis[..., 1], axis[..., 2]], axis=-1)
    degenerate = w <= eps * (n + eps)
    q = _where(degenerate, half_turn, q)
    return qnormalize(q)


def qfix(q: Array) -> Array:
    """Flip quaternion signs along the time axis (axis 0) so consecutive frames have a positive dot product.

    ``q`` has shape (T, J, 4); ``q`` and ``-q`` are the same rotation, and this picks the sign sequence
    without jumps (Pavllo et al., QuaterNet). numpy only.
    """
    q = np.asarray(q)
    out = q.copy()
    dots = (q[1:] * q[:-1]).sum(-1)
    flips = (np.cumsum(dots < 0, axis=0) % 2).astype(bool)
    out[1:][flips] *= -1
    return out


def quat_about_y(angle: Array) -> Array:
    """Unit quaternion of a rotation by ``angle`` radians about +Y: ``(cos a/2, 0, sin a/2, 0)``."""
    half = angle * 0.5
    if is_torch(angle):
        c, s = torch.cos(half), torch.sin(half)
    else:
        half = np.asarray(half, dtype=np.float64)
        c, s = np.cos(half), np.sin(half)
    z = s * 0.0
    return stack([c, z, s, z], axis=-1)


def quat_from_axis_angle(rotvec: Array, eps: float = 1e-12) -> Array:
    """Unit quaternions (..., 4) of rotation vectors (..., 3) (axis × angle in radians)."""
    angle = norm(rotvec)
    if is_torch(rotvec):
        # sin(a/2)/a, with its limit 1/2 at a = 0 (safe gradient through the where)
        small = angle < 1e-6
        safe = torch.where(small, torch.ones_like(angle), angle)
        k = torch.where(small, 0.5 - angle**2 / 48.0, torch.sin(safe * 0.5) / safe)
        w = torch.cos(angle * 0.5)
    else:
        small = angle < 1e-6
        safe = np.where(small, 1.0, angle)
        k = np.where(small, 0.5 - angle**2 / 48.0, np.sin(safe * 0.5) / safe)
        w = np.cos(angle * 0.5)
    v = rotvec * k
    return stack([w[..., 0], v[..., 0], v[..., 1], v[..., 2]], axis=-1)


# --------------------------------------------------------------------------------------------------
# matrices and the continuous 6-D representation
# --------------------------------------------------------------------------------------------------
def quat_to_matrix(q: Array) -> Array:
    """Rotation matrices (..., 3, 3) of unit quaternions (..., 4); ``R @ v == qrot(q, v)``."""
    q = qnormalize(q)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ]
    return stack(rows, axis=-2)


def matrix_to_quat(m: Array) -> Array:
    """Unit quaternions (w >= 0) of rotation matrices (..., 3, 3), by Shepperd's method.

    The largest of ``4w², 4x², 4y², 4z²`` (read off the trace and diagonal) picks the numerically safe
    branch; all four candidates are computed and the best one selected per element, so the function
    is branch-free and works batched in numpy and torch.
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    tw = 1 + m00 + m11 + m22
    tx = 1 + m00 - m11 - m22
    ty = 1 - m00 + m11 - m22
    tz = 1 - m00 - m11 + m22
    # candidate quaternions (each scaled by 4 * its dominant component)
    cands = [
        stack([tw, m21 - m12, m02 - m20, m10 - m01], axis=-1),
        stack([m21 - m12, tx, m01 + m10, m02 + m20], axis=-1),
        stack([m02 - m20, m01 + m10, ty, m12 + m21], axis=-1),
        stack([m10 - m01, m02 + m20, m12 + m21, tz], axis=-1),
    ]
    t = stack([tw, tx, ty, tz], axis=-1)
    if is_torch(m):
        best = torch.argmax(t, dim=-1, keepdim=True)
        allc = torch.stack(cands, dim=-2)  # (..., 4, 4)
        idx = best[..., None].expand(*best.shape[:-1], 1, 4)
        q = torch.gather(allc, -2, idx)[..., 0, :]
        q = qnormalize(q)
        return torch.where(q[..., :1] < 0, -q, q)
    best = np.argmax(t, axis=-1)
    allc = np.stack(cands, axis=-2)
    q = np.take_along_axis(allc, best[..., None, None].repeat(4, axis=-1), axis=-2)[..., 0, :]
    q = qnormalize(q)
    return np.where(q[..., :1] < 0, -q, q)


def matrix_to_cont6d(m: Array) -> Array:
    """Continuous 6-D representation: the first two columns of ``m``, ``[R[:, 0], R[:, 1]]`` (..., 6)."""
    if is_torch(m):
        return torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def cont6d_to_matrix(d6: Array, eps: float = 1e-12) -> Array:
    """Rotation matrices (..., 3, 3) from 6-D vectors by Gram–Schmidt (Zhou et al. 2019, Sec. 4.2).

    ``x = normalise(a)``, ``z = normalise(x × b)``, ``y = z × x``; the columns are ``x, y, z``. A valid
    rotation's 6-D vector maps back to the same matrix; any other 6-D vector maps to the nearest
    rotation in the Gram–Schmidt sense.
    """
    a, b = d6[..., 0:3], d6[..., 3:6]
    if is_torch(d6):
        x = a / norm(a).clamp_min(eps)
        z = cross(x, b)
        z = z / norm(z).clamp_min(eps)
    else:
        x = a / np.maximum(norm(a), eps)
        z = cross(x, b)
        z = z / np.maximum(norm(z), eps)
    y = cross(z, x)
    return stack([x, y, z], axis=-1)


def quat_to_cont6d(q: Array) -> Array:
    """6-D representation of unit quaternions (HumanML3D's ``quaternion_to_cont6d``)."""
    return matrix_to_cont6d(quat_to_matrix(q))


def cont6d_to_quat(d6: Array) -> Array:
    """Unit quaternions (w >= 0) of 6-D rotation vectors."""
    return matrix_to_quat(cont6d_to_matrix(d6))
