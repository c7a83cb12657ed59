"""Input validation shared by the moment functions: shapes, dtypes, devices, labels, domain ids."""

from __future__ import annotations

from base.lazy import lazy_import

torch = lazy_import("torch")


def _as_grid(theta: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if theta.dim() == 2:
        return theta.unsqueeze(0), True
    if theta.dim() == 3:
        return theta, False
    raise ValueError(f"theta must have shape (C, D) or (G, C, D), D = d+1 (or d without a bias), got "
                     f"{tuple(theta.shape)}")


def _all_finite(t: torch.Tensor) -> bool:
    # One float64 reduction is much cheaper than a boolean mask of t; only if the
    # sum is not finite (NaN/inf inside, or an overflow of huge finite values) look closer.
    with torch.no_grad():
        if bool(torch.isfinite(t.sum(dtype=torch.float64))):
            return True
        return bool(torch.isfinite(t).all())


def _check_theta_x(theta: torch.Tensor, X: torch.Tensor, same_dtype: bool = True, bias: bool = True) -> None:
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise ValueError("theta must be a floating-point torch.Tensor")
    _as_grid(theta)
    if theta.shape[-2] < 1 or theta.shape[-1] < 1 or (theta.dim() == 3 and theta.shape[0] < 1):
        raise ValueError(f"theta has an empty dimension: shape {tuple(theta.shape)}")
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise ValueError(f"X must be a 2-D tensor (N, d), got {getattr(X, 'shape', type(X))}")
    if X.shape[1] + bias != theta.shape[-1]:
        want = f"d+1 = {X.shape[1] + 1} (bias last)" if bias else f"d = {X.shape[1]} (no bias column: bias=False)"
        raise ValueError(f"X has {X.shape[1]} feature columns but theta's last dimension is {theta.shape[-1]}; it "
                         f"must be {want}")
    if not X.is_floating_point() or (same_dtype and X.dtype != theta.dtype):
        raise ValueError(f"X has dtype {X.dtype} but theta has {theta.dtype}; convert one of them")
    if X.device != theta.device:
        raise ValueError(f"X is on {X.device} but theta is on {theta.device}")
    if not _all_finite(theta):
        raise ValueError("theta contains NaN or infinite values")
    if not _all_finite(X):
        raise ValueError("X contains NaN or infinite values")


def _check_labels(name: str, v: torch.Tensor, n: int, device: torch.device) -> None:
    if not isinstance(v, torch.Tensor) or v.dtype != torch.int64 or v.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D int64 tensor, got "
            f"{getattr(v, 'dtype', type(v))} with shape {tuple(getattr(v, 'shape', ()))}"
        )
    if v.shape[0] != n:
        raise ValueError(f"{name} has {v.shape[0]} entries but X has {n} rows")
    if v.device != device:
        raise ValueError(f"{name} is on {v.device} but X is on {device}")


def _check_domain_ids(domains: torch.Tensor, num_domains: int | None) -> None:
    if num_domains is not None and (isinstance(num_domains, bool) or not isinstance(num_domains, int)
                                    or num_domains < 1):
        raise ValueError(f"num_domains must be a positive int, got {num_domains!r}")
    if domains.numel() == 0:
        return
    lo, hi = int(domains.min()), int(domains.max())
    if lo < 0:
        raise ValueError(f"domains contains the negative id {lo}; ids must be 0..K-1")
    if num_domains is not None and hi >= num_domains:
        raise ValueError(f"domains contains the id {hi} but num_domains={num_domains} (ids 0..{num_domains - 1})")


def _check_square(name: str, m: torch.Tensor | None, X: torch.Tensor) -> None:
    if m is None:
        return
    n = X.shape[0]
    if not isinstance(m, torch.Tensor) or tuple(m.shape) != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}) for X's {n} rows, got {tuple(getattr(m, 'shape', ()))}")
    if m.dtype != X.dtype or m.device != X.device:
        raise ValueError(f"{name} must have X's dtype and device ({X.dtype}, {X.device}), got ({m.dtype}, {m.device})")
    if not _all_finite(m):
        raise ValueError(f"{name} contains NaN or infinite values")


def _validate(theta, X, y=None, domains=None, num_domains=None, kernel=None, gram=None, same_dtype=True,
              bias=True) -> None:
    _check_theta_x(theta, X, same_dtype, bias)
    n = X.shape[0]
    if y is not None:
        _check_labels("y", y, n, X.device)
        C = theta.shape[-2]
        if n and (int(y.min()) < 0 or int(y.max()) >= C):
            raise ValueError(f"y has labels outside 0..{C - 1} (theta has C = {C} classes)")
    if domains is not None:
        _check_labels("domains", domains, n, X.device)
        _check_domain_ids(domains, num_domains)
    _check_square("kernel", kernel, X)
    _check_square("gram", gram, X)


def _check_choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, options))}")
