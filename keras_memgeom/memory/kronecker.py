"""The algebra of Kronecker-factored precisions `A (x) G`, on host arrays.

A Dense or Conv2D layer's weights `W~` (the kernel, flattened to
`(fan_in, units)`, with the bias appended as a last row) get the precision
`n * A (x) G` of K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for
convolutions): `A` the second moment of the layer's inputs (with a 1
appended for the bias), `G` that of the gradients at its outputs. With the
row-major `vec`, `vec(D)^T (A (x) G) vec(D) = sum(D * (A @ D @ G))`, which is
how every function here evaluates it: `A (x) G` is never formed.
"""

import numpy as np

# Relative floor of the factors' eigenvalues where they are inverted: a
# direction no example reached stays at the newest anchor.
_RELATIVE_DAMPING = 1e-10


def kronecker_quadratic(a, g, delta):
    """`vec(delta)^T (a (x) g) vec(delta)` for `delta` of shape `(len(a), len(g))`."""
    return float(np.sum(delta * (a @ delta @ g)))


def _symmetric_inverse_root(m):
    eigenvalues, vectors = np.linalg.eigh(m)
    floor = _RELATIVE_DAMPING * max(float(eigenvalues.max()), 1e-30)
    return vectors / np.sqrt(np.maximum(eigenvalues, floor))


def _joint_basis(m1, m2):
    """`T` and `mu` with `T^T m1 T = I` and `T^T m2 T = diag(mu)` (m1 damped)."""
    root = _symmetric_inverse_root(m1)
    mu, v = np.linalg.eigh(root.T @ m2 @ root)
    return root @ v, np.maximum(mu, 0.0)


def merge_anchor(older, newer):
    """The minimizer of the sum of two Kronecker quadratics.

    Each argument is `(anchor, precision_weight, a, g)`, the quadratic
    `w/2 vec(W - anchor)^T (a (x) g) vec(W - anchor)`. The sum's minimizer
    solves `(w1 a1 (x) g1 + w2 a2 (x) g2) vec(W) = ...` exactly, in the basis
    that diagonalizes both pairs of factors at once (a generalized
    eigenproblem per factor). Directions that neither quadratic constrains
    keep the newer anchor.

    Returns:
        The merged anchor, shaped like the anchors.
    """
    anchor1, w1, a1, g1 = older
    anchor2, w2, a2, g2 = newer
    # Solve for the move away from the newer anchor; damping then leaves
    # unconstrained directions where the newer memory put them.
    rhs = w1 * (a1 @ (anchor1 - anchor2) @ g1)
    t_a, mu = _joint_basis(a2 * w2, a1 * w1)
    t_g, nu = _joint_basis(g2, g1)
    # In the joint basis the operator is diagonal: 1 + mu_i nu_j.
    y = (t_a.T @ rhs @ t_g) / (1.0 + np.outer(mu, nu))
    return anchor2 + t_a @ y @ t_g.T


def nearest_kronecker(terms):
    """The Kronecker product nearest, in Frobenius norm, to a weighted sum of them.

    `sum_k w_k a_k (x) g_k` rearranged (Van Loan & Pitsianis 1993) is the
    rank-`K` matrix `sum_k w_k vec(a_k) vec(g_k)^T`; its best rank-one
    approximation is the nearest single product, and it lies in the span of
    the `a_k` and of the `g_k`, so a `K x K` singular value problem finds it.

    Args:
        terms: a list of `(weight, a, g)`.

    Returns:
        `(a, g)` with `a (x) g` the nearest product, of equal norms.
    """
    weights = np.array([w for w, _, _ in terms], dtype="float64")
    a_stack = np.stack([a.ravel() for _, a, _ in terms])
    g_stack = np.stack([g.ravel() for _, _, g in terms])
    # Orthonormal bases of the two spans from their Gram matrices.
    r_a = _gram_root(a_stack)
    r_g = _gram_root(g_stack)
    core = r_a @ np.diag(weights) @ r_g.T
    u, s, vt = np.linalg.svd(core)
    alpha = np.linalg.lstsq(r_a, u[:, 0], rcond=None)[0]
    beta = np.linalg.lstsq(r_g, vt[0], rcond=None)[0]
    # Unit-norm factors, scaled by the square root of the singular value each.
    root = np.sqrt(s[0])
    a = root * np.tensordot(alpha, np.stack([a for _, a, _ in terms]), axes=1)
    g = root * np.tensordot(beta, np.stack([g for _, _, g in terms]), axes=1)
    if np.trace(a) < 0:  # singular vectors have an arbitrary common sign
        a, g = -a, -g
    return a, g


def _gram_root(stack):
    """A square `R` with `R^T R = stack @ stack.T`, also where it is singular."""
    gram = stack @ stack.T
    eigenvalues, vectors = np.linalg.eigh(gram)
    return (vectors * np.sqrt(np.maximum(eigenvalues, 0.0))).T


def kronecker_effective_dimension(a, g, num_examples, prior_precision):
    """`sum_ij P_ij / (P_ij + alpha)` over the eigenvalues `n * lambda_i(a) mu_j(g)`."""
    precision = num_examples * np.outer(
        np.maximum(np.linalg.eigvalsh(a), 0.0), np.maximum(np.linalg.eigvalsh(g), 0.0)
    )
    return float(np.sum(precision / (precision + prior_precision)))
