import jax.numpy as jnp
import numpy as np
import pytest

from train.loss import compound_hinge_loss


def _numpy_loss(a, b, c, margin, beta, swap, intra):
    """Direct transcription of the formula, one triplet at a time."""
    out = []
    for x, y, z in zip(a, b, c, strict=True):
        def d(u, v):
            return 1.0 - float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

        dab, dac, dbc = d(x, y), d(x, z), d(y, z)
        neg = min(dac, dbc) if swap else dac
        extra = max(0.0, dab - beta) if intra else 0.0
        out.append(max(0.0, dab - neg + margin + extra))
    return np.array(out)


@pytest.mark.parametrize("swap", [True, False])
@pytest.mark.parametrize("intra", [True, False])
def test_matches_numpy_transcription(swap, intra):
    rng = np.random.default_rng(0)
    # small dimension so that many triplets are active and some are not; scales vary (not unit norm)
    a, b, c = (rng.normal(size=(64, 6)) * rng.uniform(0.5, 3, size=(64, 1)) for _ in range(3))
    b = a + 0.7 * b  # make positives closer on average so the intra/outer hinges are in both regimes
    ref = _numpy_loss(a, b, c, 0.05, 0.2, swap, intra)
    assert 0 < (ref > 0).sum() < len(ref)  # both hinge regimes exercised
    got = compound_hinge_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c), margin=0.05, beta=0.2,
                              swap=swap, intra=intra, reduction="none")
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)
    s = compound_hinge_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c), margin=0.05, beta=0.2,
                            swap=swap, intra=intra)
    np.testing.assert_allclose(float(s), ref.sum(), rtol=1e-5)
    m = compound_hinge_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c), margin=0.05, beta=0.2,
                            swap=swap, intra=intra, reduction="mean")
    np.testing.assert_allclose(float(m), ref.mean(), rtol=1e-5)


def test_swap_and_intra_change_the_result():
    rng = np.random.default_rng(1)
    a, b, c = (jnp.asarray(rng.normal(size=(32, 4))) for _ in range(3))
    vals = {(s, i): float(compound_hinge_loss(a, b, c, swap=s, intra=i)) for s in (True, False) for i in (True, False)}
    assert len(set(vals.values())) == 4


def test_hand_computed():
    # A=(1,0), B=(0.8,0.6) -> cos 0.8, d_ab=0.2; C=(0,1): d_ac=1, d_bc=1-0.6=0.4
    a = jnp.array([[1.0, 0.0]])
    b = jnp.array([[0.8, 0.6]])
    c = jnp.array([[0.0, 2.0]])  # not unit norm on purpose
    # swap+intra: 0.2 - 0.4 + 0.01 + max(0, 0.2-0.1)=0.1 -> -0.09 -> 0
    assert float(compound_hinge_loss(a, b, c)) == pytest.approx(0.0, abs=1e-6)
    # beta 0: 0.2 - 0.4 + 0.01 + 0.2 = 0.01
    assert float(compound_hinge_loss(a, b, c, beta=0.0)) == pytest.approx(0.01, abs=1e-6)
    # margin 0.5, no swap, no intra: 0.2 - 1 + 0.5 -> 0; with swap: 0.2 - 0.4 + 0.5 = 0.3
    assert float(compound_hinge_loss(a, b, c, margin=0.5, swap=False, intra=False)) == pytest.approx(0.0, abs=1e-6)
    assert float(compound_hinge_loss(a, b, c, margin=0.5, intra=False)) == pytest.approx(0.3, abs=1e-6)


def test_bad_reduction_and_shapes():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="reduction"):
        compound_hinge_loss(x, x, x, reduction="max")
    with pytest.raises(ValueError, match="shape"):
        compound_hinge_loss(x, x, jnp.ones((3, 3)))


def test_in_batch_hardest_negative_respects_groups():
    from train.loss import in_batch_hardest_loss

    a = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = jnp.array([[0.9, 0.1, 0.0], [0.95, 0.05, 0.0]])
    c = jnp.array([[0.0, 0.0, 1.0], [0.8, 0.0, 0.6]])
    # B_1 shares anchor 0's group (a 2-hop mate): though it is anchor 0's most similar image, it is skipped
    groups = jnp.array([[0, 1], [0, 0], [2, 3]])
    got = np.asarray(in_batch_hardest_loss(a, b, c, groups, margin=0.5, reduction="none"))
    # by hand: anchor 0 -> C_1 (cos 0.8), the best image outside group 0
    exp0 = compound_hinge_loss(a[:1], b[:1], c[1:2], margin=0.5, reduction="none")
    # anchor 1 (group 1): A_0, B_0, B_1, C_0, C_1 are candidates; B_0 has the largest cosine (0.110)
    exp1 = compound_hinge_loss(a[1:], b[1:], b[:1], margin=0.5, reduction="none")
    np.testing.assert_allclose(got, np.concatenate([np.asarray(exp0), np.asarray(exp1)]), atol=1e-6)
    # with only the mined negatives the loss differs (the in-batch ones are harder)
    assert not np.allclose(got, np.asarray(compound_hinge_loss(a, b, c, margin=0.5, reduction="none")))
