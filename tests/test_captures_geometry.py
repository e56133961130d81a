"""Round trips of the pose encodings the capture readers decode, against scipy as the independent oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from om3db.captures.base import GL_TO_CV, axis_angle_to_matrix, quaternion_to_matrix, trailing_ids
from om3db.errors import ScanError

unit = st.floats(-1.0, 1.0, allow_nan=False)
quats = st.tuples(unit, unit, unit, unit).filter(lambda q: np.linalg.norm(q) > 0.1)


@settings(max_examples=200, deadline=None)
@given(quats)
def test_quaternion_scalar_last_matches_scipy(q):
    q = np.asarray(q) / np.linalg.norm(q)
    assert np.allclose(quaternion_to_matrix(q, Path("m"), "pose"), Rotation.from_quat(q).as_matrix(), atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.tuples(unit, unit, unit), st.floats(0.0, np.pi, allow_nan=False))
def test_axis_angle_matches_scipy(axis, angle):
    a = np.asarray(axis)
    if np.linalg.norm(a) < 1e-3:
        a = np.array([0.0, 0.0, 1.0])
    rv = a / np.linalg.norm(a) * angle
    assert np.allclose(axis_angle_to_matrix(rv), Rotation.from_rotvec(rv).as_matrix(), atol=1e-12)


def test_non_unit_quaternion_is_refused():
    with pytest.raises(ScanError, match=r"poses\[3\]: quaternion \[0.0, 0.0, 0.0, 2.0\] is not unit \(norm 2\)"):
        quaternion_to_matrix([0.0, 0.0, 0.0, 2.0], Path("meta"), "poses[3]")


def test_opengl_to_opencv_flips_y_and_z_camera_axes():
    gl = np.eye(4)
    cv = gl @ GL_TO_CV
    assert np.array_equal(cv[:3, 1], [0, -1, 0]) and np.array_equal(cv[:3, 2], [0, 0, -1])
    assert np.array_equal(cv @ GL_TO_CV, gl)  # its own inverse


def test_trailing_ids():
    assert trailing_ids(["images/frame_00012.png", "images/frame_3.jpg"]) == [12, 3]
    assert trailing_ids(["a.png", "b1.png"]) is None  # one name without a number
    assert trailing_ids(["x_1.png", "y_1.png"]) is None  # not distinct
