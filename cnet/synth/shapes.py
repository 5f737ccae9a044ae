"""Solids of the scene world and their analytic ray intersections.

Every solid stands on the ground plane y = 0 and turns by `yaw` about its vertical axis. All rays of
one image start at the camera eye, so `intersect(eye, dirs)` takes one origin and per-pixel
directions (P, 3) and returns the ray parameter t (P,) (inf where missed), the unit outward
normals (P, 3) and the albedo (P, 3) of the surface hit. Directions have a camera-z component of 1,
so t is the depth along the optical axis and t values of different solids compare directly.

`lines(eye)` gives the straight edges a line detector would find on the solid, as (n, 2, 3) world
end points: polyhedron edges with a face towards the eye, and the straight silhouette generators
of curved solids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import combinations

import numpy as np


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _sphere_hits(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Nearest positive root of a t^2 + 2 b t + c = 0 (inf where none)."""
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > 0), t, np.inf)


_OCTAGON = np.array([[np.cos(a), np.sin(a)] for a in np.arange(8) * np.pi / 4]) / np.cos(
    np.pi / 8
)  # circumscribes the unit circle
_CUBE_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
# Hull points around a cylinder and a cone of radius 1 and height 1 standing on the origin: scaled
# by (radius, height, radius) they bound the solid.
_RING = np.stack([_OCTAGON[:, 0], np.zeros(8), _OCTAGON[:, 1]], axis=1)
_PRISM = np.concatenate([_RING, _RING + [0.0, 1.0, 0.0]])
_PYRAMID = np.concatenate([_RING, [[0.0, 1.0, 0.0]]])


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of (N, 3) arrays (np.cross spends ~10x longer on its checks)."""
    (a0, a1, a2), (b0, b1, b2) = a.T, b.T
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=1)


def _hit_points(origin: np.ndarray, t: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """origin + t * dirs, with missed rays (t = inf) at the origin instead of NaN."""
    return origin + np.where(np.isfinite(t), t, 0.0)[:, None] * dirs


def _tangent_points(center: np.ndarray, radius: float, point: np.ndarray) -> list[np.ndarray]:
    """Points of the circle (x, z plane) whose tangent passes through `point` (x, z)."""
    offset = point - center
    dist = float(np.hypot(*offset))
    if dist <= radius:
        return []
    base = np.arctan2(offset[1], offset[0])
    half = np.arccos(radius / dist)
    return [
        center + radius * np.array([np.cos(base + s * half), np.sin(base + s * half)])
        for s in (-1, 1)
    ]


@dataclass
class Solid(ABC):
    kind: str
    color: str
    albedo: np.ndarray  # (3,) float in [0, 1]
    base: np.ndarray  # (3,) centre of the footprint on the ground
    yaw: float
    rotation: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rotation = yaw_matrix(self.yaw)

    def to_local(self, eye: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rotation.T @ (eye - self.base), dirs @ self.rotation

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return points @ self.rotation.T + self.base

    @abstractmethod
    def bounding_sphere(self) -> tuple[np.ndarray, float]: ...

    @abstractmethod
    def hull(self) -> np.ndarray:
        """World points whose convex hull contains the solid: they bound its screen box."""

    @abstractmethod
    def intersect(
        self, eye: np.ndarray, dirs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def lines(self, eye: np.ndarray) -> np.ndarray:
        return np.zeros((0, 2, 3))

    def moved(self, offset: np.ndarray) -> Solid:
        return replace(self, base=self.base + offset)


@dataclass
class Sphere(Solid):
    radius: float

    def bounding_sphere(self):
        return self.base + np.array([0.0, self.radius, 0.0]), self.radius

    def hull(self):
        r = self.radius
        return self.base + [0.0, r, 0.0] + r * _CUBE_CORNERS

    def intersect(self, eye, dirs):
        center, r = self.bounding_sphere()
        oc = eye - center
        t = _sphere_hits(np.einsum("pi,pi->p", dirs, dirs), dirs @ oc, oc @ oc - r * r)
        normals = (_hit_points(eye, t, dirs) - center) / r
        return t, normals, self.albedo


@dataclass
class Polyhedron(Solid):
    """A convex solid given by its vertices and faces n . x <= d (local frame)."""

    vertices: np.ndarray  # (V, 3)
    normals: np.ndarray  # (K, 3) unit
    offsets: np.ndarray  # (K,)
    edges: np.ndarray  # (E, 4) int: vertex, vertex, and the two faces that meet there

    def hull(self):
        return self.to_world(self.vertices)

    def bounding_sphere(self):
        world = self.to_world(self.vertices)
        center = world.mean(axis=0)
        return center, float(np.linalg.norm(world - center, axis=1).max())

    def intersect(self, eye, dirs):
        o, v = self.to_local(eye, dirs)
        denom = self.normals @ v.T  # (K, P): faces first, so reductions run over whole rows
        num = (self.offsets - self.normals @ o)[:, None]  # (K, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / denom
        t_in = np.where(denom < 0, t, -np.inf)
        face = t_in.argmax(axis=0)
        t_enter = t_in[face, np.arange(len(dirs))]
        t_exit = np.where(denom > 0, t, np.inf).min(axis=0)
        outside_parallel = ((denom == 0) & (num < 0)).any(axis=0)
        hit = (t_enter <= t_exit) & (t_enter > 0) & ~outside_parallel
        normals = (self.normals @ self.rotation.T)[face]
        return np.where(hit, t_enter, np.inf), normals, self.albedo

    def lines(self, eye):
        o = self.rotation.T @ (eye - self.base)
        facing = self.normals @ o > self.offsets  # the eye is on the outer side of the face
        shown = self.edges[facing[self.edges[:, 2]] | facing[self.edges[:, 3]]]
        return self.to_world(self.vertices)[shown[:, :2]]


def _edges(vertices: np.ndarray, normals: np.ndarray, offsets: np.ndarray):
    """Pairs of vertices that share exactly two faces, with those faces."""
    on_face = np.abs(vertices @ normals.T - offsets) < 1e-6  # (V, K)
    edges = []
    for i, j in combinations(range(len(vertices)), 2):
        faces = np.flatnonzero(on_face[i] & on_face[j])
        if len(faces) == 2:
            edges.append((i, j, *faces))
    return np.array(edges)


def _box_faces(half: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    corners = np.array(
        [[x, y, z] for x in (-half, half) for y in (0, 2 * half) for z in (-half, half)]
    )
    normals = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    return corners, normals, np.array([half, half, 2 * half, 0, half, half])


def _pyramid_faces(half: float, height: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    corners = np.array(
        [[x, 0.0, z] for x in (-half, half) for z in (-half, half)] + [[0, height, 0]]
    )
    slope = np.hypot(height, half)
    sides = [
        [height * sx / slope, half / slope, height * sz / slope]
        for sx, sz in ((1, 0), (-1, 0), (0, 1), (0, -1))
    ]
    normals = np.array([[0.0, -1.0, 0.0], *sides])
    return corners, normals, np.array([0.0] + [height * half / slope] * 4)


_BOX_EDGES = _edges(*_box_faces(1.0))
_PYRAMID_EDGES = _edges(*_pyramid_faces(1.0, 1.0))


def box(kind: str, color: str, albedo, base, yaw: float, half: float) -> Polyhedron:
    return Polyhedron(kind, color, albedo, base, yaw, *_box_faces(half), _BOX_EDGES)


def pyramid(
    kind: str, color: str, albedo, base, yaw: float, half: float, height: float
) -> Polyhedron:
    return Polyhedron(kind, color, albedo, base, yaw, *_pyramid_faces(half, height), _PYRAMID_EDGES)


@dataclass
class Cylinder(Solid):
    radius: float
    height: float

    def bounding_sphere(self):
        return self.base + np.array([0.0, self.height / 2, 0.0]), float(
            np.hypot(self.radius, self.height / 2)
        )

    def hull(self):
        return self.to_world(_PRISM * [self.radius, self.height, self.radius])

    def intersect(self, eye, dirs):
        o, v = self.to_local(eye, dirs)
        r, h = self.radius, self.height
        a = v[:, 0] ** 2 + v[:, 2] ** 2
        t_side = _sphere_hits(a, v[:, 0] * o[0] + v[:, 2] * o[2], o[0] ** 2 + o[2] ** 2 - r * r)
        y = o[1] + t_side * v[:, 1]
        t_side = np.where((y >= 0) & (y <= h), t_side, np.inf)
        # The eye is always above the ground, so of the two caps only the top one can be seen.
        t_cap = np.full_like(t_side, np.inf)
        if o[1] > h:
            with np.errstate(divide="ignore", invalid="ignore"):
                t_top = (h - o[1]) / v[:, 1]
            x, z = o[0] + t_top * v[:, 0], o[2] + t_top * v[:, 2]
            t_cap = np.where((t_top > 0) & (x * x + z * z <= r * r), t_top, np.inf)
        t = np.minimum(t_side, t_cap)
        p = _hit_points(o, t, v)
        n = np.where((t_cap < t_side)[:, None], [0.0, 1.0, 0.0], p * [1, 0, 1] / r)
        return t, n @ self.rotation.T, self.albedo

    def lines(self, eye):
        o = self.rotation.T @ (eye - self.base)
        points = _tangent_points(np.zeros(2), self.radius, o[[0, 2]])
        ends = [[[x, 0.0, z], [x, self.height, z]] for x, z in points]
        return self.to_world(np.array(ends).reshape(-1, 3)).reshape(-1, 2, 3)


@dataclass
class Cone(Solid):
    radius: float
    height: float

    def bounding_sphere(self):
        r, h = self.radius, self.height
        center_y = max(0.0, (h * h - r * r) / (2 * h))  # circumsphere of apex and base circle
        return self.base + np.array([0.0, center_y, 0.0]), float(np.hypot(r, center_y))

    def hull(self):
        return self.to_world(_PYRAMID * [self.radius, self.height, self.radius])

    def intersect(self, eye, dirs):
        o, v = self.to_local(eye, dirs)
        k2 = (self.radius / self.height) ** 2
        q0, q1 = self.height - o[1], -v[:, 1]  # height below the apex along the ray: q0 + t q1
        a = v[:, 0] ** 2 + v[:, 2] ** 2 - k2 * q1 * q1
        b = v[:, 0] * o[0] + v[:, 2] * o[2] - k2 * q0 * q1
        c = o[0] ** 2 + o[2] ** 2 - k2 * q0 * q0
        disc = b * b - a * c
        with np.errstate(invalid="ignore", divide="ignore"):
            root = np.sqrt(disc)
            roots = np.stack([(-b - root) / a, (-b + root) / a])
        q = q0 + roots * q1
        valid = (disc >= 0) & (roots > 0) & (q >= 0) & (q <= self.height)
        # The base disc faces the ground and the eye is always above it: only the side is seen.
        t = np.where(valid, roots, np.inf).min(axis=0)
        p = _hit_points(o, t, v)
        n = np.stack([p[:, 0], k2 * (self.height - p[:, 1]), p[:, 2]], axis=1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return t, n @ self.rotation.T, self.albedo

    def lines(self, eye):
        o = self.rotation.T @ (eye - self.base)
        if abs(o[1] - self.height) <= 1e-8 + 1e-5 * self.height:  # np.isclose, 20x faster
            return np.zeros((0, 2, 3))
        # The silhouette generators touch the base circle where the planes through eye and apex do.
        apex = np.array([0.0, self.height, 0.0])
        hit = apex + (o - apex) * (apex[1] / (apex[1] - o[1]))
        points = _tangent_points(np.zeros(2), self.radius, hit[[0, 2]])
        ends = [[apex, [x, 0.0, z]] for x, z in points]
        return self.to_world(np.array(ends).reshape(-1, 3)).reshape(-1, 2, 3)


@dataclass
class Person(Solid):
    """The humanoid: capsules (segments swept by spheres) with their own albedo (skin or clothes),
    and its OpenPose keypoints. Capsule k runs from starts[k] to ends[k] (world points)."""

    starts: np.ndarray  # (K, 3)
    ends: np.ndarray  # (K, 3)
    radii: np.ndarray  # (K,)
    part_albedo: np.ndarray  # (K, 3)
    keypoints: np.ndarray  # (18, 3) world, OpenPose COCO order
    outline_parts: tuple[int, ...]  # limbs and torso: their straight sides count as lines

    def bounding_sphere(self):
        points = np.stack([self.starts, self.ends], axis=1).reshape(-1, 3)
        center = points.mean(axis=0)
        return center, float(np.linalg.norm(points - center, axis=1).max() + self.radii.max())

    def hull(self):
        """The corners of every capsule's axis-aligned bounding box."""
        low = np.minimum(self.starts, self.ends) - self.radii[:, None]
        high = np.maximum(self.starts, self.ends) + self.radii[:, None]
        return np.where(_CUBE_CORNERS > 0, high[:, None], low[:, None]).reshape(-1, 3)

    @cached_property
    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit directions (K, 3) from start to end, and lengths (K,)."""
        axis = self.ends - self.starts
        length = np.linalg.norm(axis, axis=1)
        return axis / length[:, None], length

    def _hits(self, eye: np.ndarray, dirs: np.ndarray):
        """(ray, capsule, t) of every ray that hits a capsule, ordered by ray, then capsule."""
        starts, ends, radii = self.starts, self.ends, self.radii
        u, length = self.axes
        w = eye - starts
        wu = (w * u).sum(axis=1)
        w_perp = w - wu[:, None] * u
        w_end = eye - ends
        # Only rays that pass through a capsule's bounding sphere are intersected with it: their
        # angle to the sphere's centre c is at most asin(bound / |c|).
        c = (starts + ends) / 2 - eye
        bound = 1.01 * (length / 2 + radii)  # the margin keeps rounding from dropping a hit
        distance = np.linalg.norm(c, axis=1)
        cos_limit = np.sqrt(np.maximum(1 - (bound / distance) ** 2, 0.0))
        cos_limit[distance <= bound] = -1.0  # the eye inside the sphere: every ray
        vv = np.einsum("pi,pi->p", dirs, dirs)
        cos_angle = (dirs / np.sqrt(vv)[:, None]) @ (c / distance[:, None]).T  # (P, K)
        ray, part = np.divmod(np.flatnonzero(cos_angle >= cos_limit), len(radii))

        # dirs . (u, w_perp, w, w_end) of each pair, as (4, pairs)
        toward = np.concatenate([u, w_perp, w, w_end], axis=1).T[:, part].reshape(4, 3, -1)
        x, y, z = dirs.T[:, ray]
        vu, v_w_perp, v_w, v_w_end = x * toward[:, 0] + y * toward[:, 1] + z * toward[:, 2]
        vv, r2 = vv[ray], radii[part] ** 2
        # v_perp . w_perp == v . w_perp because w_perp is orthogonal to the axis
        t_side = _sphere_hits(vv - vu * vu, v_w_perp, (w_perp * w_perp).sum(axis=1)[part] - r2)
        along = wu[part] + t_side * vu
        t_side = np.where((along >= 0) & (along <= length[part]), t_side, np.inf)
        t_caps = np.minimum(
            _sphere_hits(vv, v_w, (w * w).sum(axis=1)[part] - r2),
            _sphere_hits(vv, v_w_end, (w_end * w_end).sum(axis=1)[part] - r2),
        )
        t = np.minimum(t_side, t_caps)
        hit = np.flatnonzero(t < np.inf)
        return ray[hit], part[hit], t[hit]

    def intersect(self, eye, dirs):
        ray, part, t_hit = self._hits(eye, dirs)
        # Per ray the first capsule with the least float32 t wins, as when each capsule is drawn
        # in turn with a strict z-test.
        t32 = t_hit.astype(np.float32)
        first = np.flatnonzero(np.diff(ray, prepend=-1))
        least = np.repeat(np.minimum.reduceat(t32, first), np.diff(first, append=len(ray)))
        best = np.flatnonzero(t32 == least)
        win = best[np.diff(ray[best], prepend=-1) != 0]
        ray, part, t_win = ray[win], part[win], t_hit[win]

        t = np.full(len(dirs), np.inf)
        t[ray] = t_win
        p = eye + t_win[:, None] * dirs[ray] - self.starts[part]
        u, length = self.axes[0][part], self.axes[1][part]
        along = np.clip((p * u).sum(axis=1), 0.0, length)
        normals = np.zeros((len(dirs), 3))
        normals[ray] = (p - along[:, None] * u) / self.radii[part, None]
        albedo = np.zeros((len(dirs), 3))
        albedo[ray] = self.part_albedo[part]
        return t, normals, albedo

    def lines(self, eye):
        k = list(self.outline_parts)
        starts, ends = self.starts[k], self.ends[k]
        side = _cross(ends - starts, (starts + ends) / 2 - eye)
        side *= (self.radii[k] / np.linalg.norm(side, axis=1))[:, None]
        both_sides = [starts + side, ends + side, starts - side, ends - side]
        return np.stack(both_sides, axis=1).reshape(-1, 2, 3)  # per part: +side, then -side

    def moved(self, offset: np.ndarray) -> Person:
        return replace(
            self,
            base=self.base + offset,
            starts=self.starts + offset,
            ends=self.ends + offset,
            keypoints=self.keypoints + offset,
        )
