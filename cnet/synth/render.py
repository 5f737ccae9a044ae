"""Ray-cast a scene into per-pixel buffers: object ids, depth, normals, albedo and the shaded image.

Each solid is intersected only inside the screen box of its hull, and a z-buffer keeps
the nearest hit. Shading is Lambert with one directional light plus ambient, no shadows, so that
every intensity edge of the image is an object boundary or a crease.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from cnet.synth import palette
from cnet.synth.scene import FLOOR_DEPTH, Scene

BACKGROUND, FLOOR = 0, 1  # pixel ids; object i of scene.objects has id i + FIRST_OBJECT
FIRST_OBJECT = 2
AMBIENT, DIFFUSE = 0.35, 0.65
SAMPLES_PER_EDGE = 32
HIDDEN_EDGE_TOLERANCE = 0.03  # relative depth by which an edge may lie behind the visible surface
_EDGE_SAMPLES = np.linspace(0.0, 1.0, SAMPLES_PER_EDGE)[None, :, None]


@dataclass(eq=False)
class Render:
    scene: Scene = field(repr=False)
    ids: np.ndarray  # (H, W) uint8
    depth: np.ndarray  # (H, W) float32 distance along the optical axis, inf where nothing is hit
    world_normals: np.ndarray  # (H, W, 3) float32 unit, world frame
    albedo: np.ndarray  # (H, W, 3) float32 in [0, 1], unshaded surface colour
    rgb: np.ndarray  # (H, W, 3) uint8, the target image

    def mask(self, index: int) -> np.ndarray:
        """Visible pixels of scene.objects[index]."""
        return self.ids == index + FIRST_OBJECT

    @cached_property
    def normals(self) -> np.ndarray:
        """(H, W, 3) float32 unit normals in the camera frame (right, up, towards the viewer)."""
        to_camera = self.scene.camera.rotation.T * [[1.0], [1.0], [-1.0]]
        return cv2.transform(self.world_normals, to_camera.astype(np.float32))

    @cached_property
    def keypoints(self) -> list[np.ndarray]:
        """(18, 3) pixel x, y and visibility (1 or 0) for every person, OpenPose COCO order. A
        keypoint is hidden when it falls outside the image or behind another object."""
        scene, size = self.scene, self.ids.shape[0]
        people = []
        for index, obj in enumerate(scene.objects):
            if obj.kind != "person":
                continue
            xy, depth = scene.camera.project(obj.keypoints, size)
            col, row = np.floor(xy).astype(int).T
            inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
            col, row = np.clip(col, 0, size - 1), np.clip(row, 0, size - 1)
            owner = self.ids[row, col]
            covered = (
                (owner != index + FIRST_OBJECT)
                & (owner >= FIRST_OBJECT)
                & (self.depth[row, col] < depth)
            )
            people.append(np.concatenate([xy, (inside & ~covered)[:, None]], axis=1))
        return people

    @cached_property
    def edges(self) -> np.ndarray:
        """(N, 4) float pixel segments (x1, y1, x2, y2): the parts of the objects' straight edges
        that no nearer surface hides."""
        scene, size = self.scene, self.ids.shape[0]
        lines = np.concatenate(
            [np.zeros((0, 2, 3))] + [obj.lines(scene.camera.eye) for obj in scene.objects]
        )
        if not len(lines):
            return np.zeros((0, 4), np.float32)
        points = lines[:, :1] + (lines[:, 1:] - lines[:, :1]) * _EDGE_SAMPLES  # (S, T, 3)
        xy, depth = scene.camera.project(points.reshape(-1, 3), size)
        col, row = np.floor(xy).astype(int).T
        inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
        # The farthest surface around the pixel: a line on a silhouette is in front of what lies
        # beside it, a line behind an object is behind everything around it.
        farthest = cv2.dilate(self.depth, np.ones((3, 3), np.uint8))
        surface = farthest[np.clip(row, 0, size - 1), np.clip(col, 0, size - 1)]
        shown = (inside & (depth <= surface * (1 + HIDDEN_EDGE_TOLERANCE))).reshape(len(lines), -1)
        # runs of shown samples become segments
        padded = np.zeros((len(lines), SAMPLES_PER_EDGE + 2), np.int8)
        padded[:, 1:-1] = shown
        steps = np.diff(padded, axis=1)
        line_start, first = np.nonzero(steps == 1)
        _, stop = np.nonzero(steps == -1)
        keep = stop - first >= 2
        xy = xy.reshape(len(lines), -1, 2)
        starts = xy[line_start[keep], first[keep]]
        ends_xy = xy[line_start[keep], stop[keep] - 1]
        return np.concatenate([starts, ends_xy], axis=1).astype(np.float32)


def _screen_boxes(scene: Scene, size: int) -> list[tuple[slice, slice]]:
    """Pixel rows and columns of each object: the screen box of its hull, in one projection."""
    hulls = [obj.hull() for obj in scene.objects]
    if not hulls:
        return []
    xy, _ = scene.camera.project(np.concatenate(hulls), size)
    first = np.cumsum([0] + [len(hull) for hull in hulls[:-1]])
    low = np.maximum(np.floor(np.minimum.reduceat(xy, first)).astype(int), 0).tolist()
    high = np.minimum(np.ceil(np.maximum.reduceat(xy, first)).astype(int) + 1, size).tolist()
    return [
        (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
        for (x0, y0), (x1, y1) in zip(low, high, strict=True)
    ]


def _fill(target: np.ndarray, value) -> None:
    """target[:] = value for a per-pixel vector; a whole row broadcast down is ~5x faster than
    numpy's broadcast of one short vector over every pixel."""
    target[:] = np.tile(np.asarray(value, target.dtype), (target.shape[1], 1))


def _shade(normal_dot_light: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Lambert plus ambient: uint8 colours of pixels with these albedos (..., 3)."""
    shade = (AMBIENT + DIFFUSE * np.maximum(normal_dot_light, 0.0)) * 255
    return (albedo * np.repeat(shade, 3).reshape(albedo.shape) + 0.5).astype(np.uint8)


def render(scene: Scene, size: int) -> Render:
    camera = scene.camera
    light = scene.light.astype(np.float32)
    dirs = camera.rays(size)
    depth = np.full((size, size), np.inf, np.float32)
    ids = np.zeros((size, size), np.uint8)
    albedo = np.zeros((size, size, 3), np.float32)
    normals = np.empty((size, size, 3), np.float32)  # world frame
    _fill(normals, -camera.rotation[:, 2])  # the background faces the viewer
    rgb = np.empty((size, size, 3), np.uint8)
    _fill(rgb, palette.BACKGROUND_COLORS[scene.background])

    # Masked writes go through cv2.copyTo: numpy's boolean assignment of 3-vectors is ~10x slower.
    if scene.floor is not None:
        # The camera has no roll, so the ground fills whole rows from the horizon down.
        down = dirs[:, 0, 1]
        with np.errstate(divide="ignore"):
            t = -camera.eye[1] / down
        on_ground = (down < 0) & (t < FLOOR_DEPTH)
        if on_ground.any():
            top = int(on_ground.argmax())
            depth[top:] = t[top:, None]
            ids[top:] = FLOOR
            _fill(normals[top:], [0.0, 1.0, 0.0])
            color = (np.array(palette.FLOOR_COLORS[scene.floor])[None] / 255).astype(np.float32)
            _fill(albedo[top:], color[0])
            _fill(rgb[top:], _shade(light[1:2], color)[0])  # the up normal . light is light[1]

    band_start, band_stop = size, 0  # the rows objects cover
    boxes = _screen_boxes(scene, size)
    for index, (obj, (rows, cols)) in enumerate(zip(scene.objects, boxes, strict=True)):
        band_start, band_stop = min(band_start, rows.start), max(band_stop, rows.stop)
        region = dirs[rows, cols]
        shape = region.shape[:2]
        t, n, a = obj.intersect(camera.eye, region.reshape(-1, 3))
        t = t.reshape(shape).astype(np.float32)
        nearer = t < depth[rows, cols]
        mask = nearer.view(np.uint8)
        cv2.copyTo(t, mask, depth[rows, cols])
        ids[rows, cols][nearer] = index + FIRST_OBJECT
        cv2.copyTo(n.reshape(*shape, 3).astype(np.float32), mask, normals[rows, cols])
        if a.ndim == 1:  # one colour for the whole solid
            colors = np.empty((*shape, 3), np.float32)
            _fill(colors, a)
        else:
            colors = a.reshape(*shape, 3).astype(np.float32)
        cv2.copyTo(colors, mask, albedo[rows, cols])

    if band_start < band_stop:
        band = slice(band_start, band_stop)
        shaded = _shade(normals[band].reshape(-1, 3) @ light, albedo[band])
        cv2.copyTo(shaded, (ids[band] >= FIRST_OBJECT).view(np.uint8), rgb[band])
    return Render(scene, ids, depth, normals, albedo, rgb)
