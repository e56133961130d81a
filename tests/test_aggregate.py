"""Aggregation against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from om3db.aggregate import dbscan_inliers, instance_vector, max_view_similarity, normalize, view_vectors
from om3db.errors import ConfigError


def _unit_at(deg: float) -> np.ndarray:
    r = np.radians(deg)
    return np.array([np.cos(r), np.sin(r), 0.0], np.float32)


def test_view_vector_is_renormalised_mean_of_levels():
    levels = np.array([[[1, 0, 0], [0, 1, 0], [0, 1, 0]]], np.float32)  # mean (1/3, 2/3, 0)
    np.testing.assert_allclose(view_vectors(levels), [[1 / np.sqrt(5), 2 / np.sqrt(5), 0]], rtol=1e-6)


def test_dbscan_drops_the_outlier_view():
    # cosine distance 1 - cos(deg): 5 deg -> 0.0038, 60 deg -> 0.5
    v = np.stack([_unit_at(0), _unit_at(3), _unit_at(6), _unit_at(60)])
    assert dbscan_inliers(v).tolist() == [True, True, True, False]  # min_samples = 4 // 2 + 1 = 3


def test_dbscan_default_min_samples_is_majority():
    # two tight pairs: with 4 views min_samples is 3, so both pairs are noise -> all kept
    v = np.stack([_unit_at(0), _unit_at(1), _unit_at(90), _unit_at(91)])
    assert dbscan_inliers(v).tolist() == [True] * 4
    assert dbscan_inliers(v, min_samples=2).tolist() == [True] * 4  # two clusters, no noise
    v5 = np.stack([_unit_at(0), _unit_at(1), _unit_at(90), _unit_at(91), _unit_at(200)])
    assert dbscan_inliers(v5, min_samples=2).tolist() == [True, True, True, True, False]


def test_dbscan_eps_is_cosine_distance():
    # 3 views: min_samples = 2; neighbours 20 deg apart are at cosine distance 1 - cos 20 = 0.060
    v = np.stack([_unit_at(0), _unit_at(20), _unit_at(80)])
    assert dbscan_inliers(v, eps=0.07).tolist() == [True, True, False]
    assert dbscan_inliers(v, eps=0.05).tolist() == [True, True, True]  # all noise -> keep all
    assert dbscan_inliers(v[:2]).tolist() == [True, True]


def test_instance_vector_mean_of_inliers():
    v = np.stack([_unit_at(0), _unit_at(90), _unit_at(180)])
    np.testing.assert_allclose(
        instance_vector(v, np.array([True, True, False])), [np.sqrt(0.5), np.sqrt(0.5), 0], atol=1e-6
    )
    np.testing.assert_allclose(instance_vector(v), [0, 1, 0], atol=1e-6)


def test_max_view_similarity_is_max_of_per_view_cosines():
    v = np.stack([_unit_at(0), _unit_at(90), _unit_at(45)])
    q = np.array([0, 2, 0], np.float32)  # normalised inside
    assert max_view_similarity(q, v) == pytest.approx(1.0)
    assert max_view_similarity(q, v, np.array([True, False, True])) == pytest.approx(np.cos(np.radians(45)))
    # "max" differs from the mean vector's similarity
    assert float(instance_vector(v) @ normalize(q)) < max_view_similarity(q, v)


def test_bad_inputs():
    with pytest.raises(ConfigError, match=r"level embeddings must be \(views, levels, dim\), got shape \(2, 3\)"):
        view_vectors(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="DBSCAN eps must be > 0"):
        dbscan_inliers(np.eye(3), eps=0)
    with pytest.raises(ConfigError, match="DBSCAN min_samples must be >= 1"):
        dbscan_inliers(np.eye(3), min_samples=0)
    with pytest.raises(ConfigError, match=r"view vectors must be \(views, dim\)"):
        dbscan_inliers(np.zeros(3))
    with pytest.raises(ConfigError, match="needs at least one view vector"):
        instance_vector(np.zeros((0, 3)))
    with pytest.raises(ConfigError, match=r"inlier flags have shape \(2,\), expected \(3,\)"):
        instance_vector(np.eye(3), np.array([True, False]))
    with pytest.raises(ConfigError, match="inlier flags select no view"):
        max_view_similarity(np.ones(3), np.eye(3), np.zeros(3, bool))
    with pytest.raises(ConfigError, match=r"do not match a query of dim 4"):
        max_view_similarity(np.ones(4), np.eye(3))
