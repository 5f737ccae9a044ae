"""The synthetic scene world: every map agrees with the geometry it was drawn from."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import cache

import cv2
import numpy as np
import pytest

from cnet.detectors.seg import ade20k_color
from cnet.synth import palette
from cnet.synth.maps import CONDITION_MAPS, MAP_SHOWS_ONLY, horizon_segments, training_kinds
from cnet.synth.render import FIRST_OBJECT, render
from cnet.synth.sample import CONDITION_KEYS, KIND_CLASSES, Sample, generate
from cnet.synth.scene import MIN_WALL_SHARE, sample_scene
from cnet.synth.splits import SPLITS, split_seeds

SEEDS = range(24)


@cache
def sample(seed: int) -> Sample:
    return generate(seed, 128)


def without_floor() -> list[Sample]:
    return [s for s in map(sample, SEEDS) if s.scene.floor is None]


def geometric_boundaries(s: Sample, reach: int = 1) -> np.ndarray:
    """Pixels within `reach` of a change of object id or of surface orientation (a crease)."""
    ids = s.render.ids.astype(np.int16)
    normals = s.render.normals
    change = np.zeros(ids.shape, bool)
    for axis in (0, 1):
        id_step = np.diff(ids, axis=axis) != 0
        crease = np.linalg.norm(np.diff(normals, axis=axis), axis=-1) > 0.2
        step = id_step | crease
        if axis == 0:
            change[1:] |= step
            change[:-1] |= step
        else:
            change[:, 1:] |= step
            change[:, :-1] |= step
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    return cv2.dilate(change.view(np.uint8), kernel).astype(bool)


def test_maps_are_uint8_rgb_in_paper_order():
    s = sample(0)
    assert tuple(s.conditions) == CONDITION_KEYS
    for control in [s.image, *s.conditions.values()]:
        assert control.dtype == np.uint8 and control.shape == (128, 128, 3)


def test_same_seed_gives_identical_arrays_and_subsets_match():
    first, again = generate(7, 96), generate(7, 96)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.masks, again.masks)
    for key in CONDITION_KEYS:
        assert np.array_equal(first.conditions[key], again.conditions[key]), key
    only = generate(7, 96, ["scribble"])
    assert np.array_equal(only.conditions["scribble"], first.conditions["scribble"])
    assert first.prompt == again.prompt and first.attributes == again.attributes


def test_different_seeds_differ():
    assert not np.array_equal(sample(0).image, sample(1).image)


def test_splits_share_no_seed():
    ranges = sorted(SPLITS.values(), key=lambda r: r.start)
    for before, after in zip(ranges, ranges[1:], strict=False):
        assert before.stop <= after.start
    assert len(SPLITS["test"]) >= 1000
    assert list(split_seeds("test", 3, start=2)) == [1_000_002, 1_000_003, 1_000_004]
    with pytest.raises(ValueError, match="choose from"):
        split_seeds("dev")
    with pytest.raises(ValueError, match=r"test split holds 1000 scenes, 2 of them from scene 998"):
        split_seeds("test", 3, start=998)


def test_masks_depth_seg_and_target_coincide():
    checked = 0
    for s in without_floor():
        objects = s.masks.any(axis=0)
        background_rgb = palette.BACKGROUND_COLORS[s.scene.background]
        assert objects.any()
        assert np.array_equal(s.conditions["depth"][..., 0] > 0, objects)
        wall = np.all(s.conditions["seg"] == ade20k_color("wall"), axis=-1)
        assert np.array_equal(~wall, objects)
        assert np.array_equal(np.any(s.image != background_rgb, axis=-1), objects)
        checked += 1
    assert checked >= 5


def test_masks_are_disjoint_and_match_seg_classes_with_a_floor():
    for s in map(sample, SEEDS):
        assert (s.masks.sum(axis=0) <= 1).all()
        for index, obj in enumerate(s.scene.objects):
            color = ade20k_color(palette.SEG_CLASS[obj.kind])
            painted = np.all(s.conditions["seg"] == color, axis=-1)
            same_class = [i for i, o in enumerate(s.scene.objects) if o.kind == obj.kind]
            assert np.array_equal(painted, s.masks[same_class].any(axis=0))
            assert s.masks[index].sum() > 30, "every object is mostly visible"


def test_kind_map_names_each_pixel_s_object_kind_floor_or_background():
    for s in map(sample, SEEDS):
        kinds = s.kinds
        assert kinds.shape == s.image.shape[:2] and kinds.dtype == np.uint8
        for index, obj in enumerate(s.scene.objects):
            assert (kinds[s.masks[index]] == KIND_CLASSES.index(obj.kind)).all()
        uncovered = ~s.masks.any(axis=0)
        assert set(np.unique(kinds[uncovered])) <= {0, 1}
        assert (kinds == 1).any() == (s.scene.floor is not None)


def test_depth_is_near_bright():
    for s in map(sample, SEEDS):
        if len(s.scene.objects) < 2:
            continue
        depth_map = s.conditions["depth"][..., 0].astype(int)
        means = [(s.render.depth[m].mean(), depth_map[m].mean()) for m in s.masks]
        (near_z, near_value), (far_z, far_value) = sorted(means)[0], sorted(means)[-1]
        if far_z - near_z > 0.5:
            assert near_value > far_value


def test_sphere_normals_point_outward():
    found = 0
    for seed in range(60):
        s = sample(seed) if seed in SEEDS else generate(seed, 128)
        for index, obj in enumerate(s.scene.objects):
            if obj.kind != "sphere":
                continue
            rows, cols = np.nonzero(s.masks[index])
            n = s.conditions["normal"][rows, cols].astype(float) / 127.5 - 1.0  # left, up, front
            dx, dy = cols - cols.mean(), rows - rows.mean()  # from the disc's centre, y down
            rim = np.hypot(dx, dy) > 3
            outward = -n[:, 0] * dx - n[:, 1] * dy  # (right, down) . offset
            assert (n[:, 2] > 0).mean() > 0.97, "the visible half faces the viewer"
            assert (outward[rim] > 0).mean() > 0.97
            # perspective shifts where a normal turns sideways by a little: test the outer half
            half = np.hypot(dx, dy).max() / 2
            right, below = dx > half, dy > half
            assert (n[right, 0] < 0).mean() > 0.95, "facing right: red below 127"
            assert (n[below, 1] < 0).mean() > 0.95, "facing down: green below 127"
            found += 1
    assert found >= 2


def test_canny_edges_lie_on_object_boundaries():
    for s in map(sample, SEEDS):
        edges = s.conditions["canny"][..., 0] > 0
        assert edges.any()
        on_boundary = geometric_boundaries(s)[edges].mean()
        assert on_boundary > 0.97, (s.seed, on_boundary)


def test_hough_segments_lie_on_straight_boundaries():
    for s in map(sample, SEEDS):
        lines = s.conditions["hough"][..., 0] > 0
        if lines.sum() < 20:
            continue
        assert geometric_boundaries(s, reach=2)[lines].mean() > 0.9, s.seed
    cube_scenes = [s for s in map(sample, SEEDS) if any(o.kind == "cube" for o in s.scene.objects)]
    assert all(s.conditions["hough"].any() for s in cube_scenes)


def test_scribble_is_thick_white_on_black_around_objects_and_the_horizon():
    horizons = 0
    for s in map(sample, SEEDS):
        strokes = s.conditions["scribble"]
        assert set(np.unique(strokes)) <= {0, 255}
        drawn = strokes[..., 0] > 0
        assert drawn.any()
        outlines = s.masks.any(axis=0).view(np.uint8)
        for x0, row, x1, _ in horizon_segments(s.scene, s.render).astype(int):
            outlines[row, x0 : x1 + 1] = 1
            # The hand follows the horizon: strokes lie within a few rows of most of its length.
            band = drawn[max(0, row - 4) : row + 5, x0 : x1 + 1].any(axis=0)
            assert band.mean() > 0.8, s.seed
            horizons += 1
        near = cv2.dilate(outlines, np.ones((9, 9), np.uint8)) > 0
        assert near[drawn].mean() > 0.95
    assert horizons


def test_pose_keypoints_lie_inside_the_person():
    people = 0
    for seed in range(60):
        s = sample(seed) if seed in SEEDS else generate(seed, 128)
        persons = [i for i, o in enumerate(s.scene.objects) if o.kind == "person"]
        if not persons:
            assert not s.conditions["pose"].any(), "no person, black pose map"
            continue
        for index, points in zip(persons, s.keypoints, strict=True):
            visible = points[points[:, 2] > 0]
            assert len(visible) >= 12
            cols, rows = np.floor(visible[:, :2]).astype(int).T
            assert s.render.ids[rows, cols].tolist() == [index + FIRST_OBJECT] * len(visible)
            assert s.conditions["pose"][rows, cols].any(axis=-1).all(), "drawn at every keypoint"
            people += 1
    assert people >= 3


def test_prompt_names_exactly_the_objects_with_their_colours():
    kinds = "sphere|cube|cylinder|cone|pyramid|person"
    for s in map(sample, SEEDS):
        named = re.findall(rf"\b(?:an? (\w+) ({kinds})|a (person) in (\w+))\b", s.prompt)
        pairs = sorted((k or k2, c or c2) for c, k, k2, c2 in named)
        assert pairs == sorted((o.kind, o.color) for o in s.scene.objects), s.prompt
        wall = s.scene.floor is None or s.scene.wall_share >= MIN_WALL_SHARE
        assert s.prompt.endswith(f"{s.scene.background} background" if wall else "floor")
        for index, obj in enumerate(s.scene.objects):
            albedo = s.render.albedo[s.masks[index]]
            painted = np.round(albedo * 255).astype(int)
            share = np.all(painted == palette.OBJECT_COLORS[obj.color], axis=-1).mean()
            assert share > (0.5 if obj.kind == "person" else 0.99), (s.prompt, obj.kind)
        assert [o["kind"] for o in s.attributes["objects"]] == [o.kind for o in s.scene.objects]


@pytest.mark.parametrize("seed", [0, 1, 8, 43, 103])  # shares 0.37, 0, 0.06, 0.03, 0.03
def test_wall_share_is_the_rows_above_the_floor(seed):
    scene = sample_scene(seed)
    rows_with_floor = (render(scene, 256).ids == 1).any(axis=1)
    assert abs(scene.wall_share - rows_with_floor.argmax() / 256) <= 1 / 256


def test_the_prompt_names_the_wall_only_when_it_shows():
    framed_by_floor = sample_scene(1)  # the camera looks down: no wall in the picture
    assert framed_by_floor.wall_share == 0.0
    assert framed_by_floor.prompt.endswith(f"on a {framed_by_floor.floor} floor")
    assert sample_scene(43).prompt.endswith("background")  # a thin strip of wall still counts
    shares = [sample_scene(seed).wall_share for seed in range(400)]
    assert 0.02 < np.mean(np.less(shares, MIN_WALL_SHARE)) < 0.15


def test_every_kind_and_both_floor_settings_occur():
    scenes = [sample(seed).scene for seed in SEEDS]
    assert {o.kind for sc in scenes for o in sc.objects} == set(palette.SEG_CLASS) - {
        "background",
        "floor",
    }
    assert {sc.floor is None for sc in scenes} == {True, False}


def test_a_scene_without_objects_renders_its_background_and_floor():
    s = next(s for s in map(sample, SEEDS) if s.scene.floor is not None)
    empty = render(replace(s.scene, objects=()), 128)  # what evaluate.empty_scene draws
    assert not (empty.ids >= FIRST_OBJECT).any() and len(empty.edges) == 0
    uncovered = ~s.masks.any(axis=0)
    assert np.array_equal(empty.rgb[uncovered], s.image[uncovered])
    for key, draw in CONDITION_MAPS.items():
        assert draw(empty.scene, empty).shape == (128, 128, 3), key


def test_any_size_renders_the_same_scene():
    small, large = generate(3, 64), generate(3, 192)
    assert small.prompt == large.prompt
    coverage = [s.masks.any(axis=0).mean() for s in (small, large)]
    assert abs(coverage[0] - coverage[1]) < 0.02


def test_a_scene_drawn_to_include_a_kind_holds_one_and_others_stay_as_they_were():
    for seed in range(60):
        plain = sample_scene(seed)
        with_person = sample_scene(seed, ("person",))
        assert any(obj.kind == "person" for obj in with_person.objects)
        assert with_person.include == ("person",) and plain.include == ()
        assert with_person.attributes()["include"] == ["person"]
        assert "include" not in plain.attributes()
    # without `include` the scene is the one the seed always drew (the test split's included)
    assert generate(5, 64).prompt == sample_scene(5).prompt == sample(5).prompt


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((0, 0), "The size is a whole number of at least 1, got 0."),
        ((0, 7.5), "The size is a whole number of at least 1, got 7.5."),
        ((-1, 64), "The seed is a whole number of at least 0, got -1."),
        ((None, 64), "The seed is a whole number of at least 0, got None."),
        ((0, 64, None, ("dragon",)), "Unknown object kind 'dragon'; choose from: sphere, cube"),
    ],
)
def test_generate_refuses_what_it_cannot_draw(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(*arguments)


def test_one_kind_or_condition_may_be_given_alone():
    alone = generate(5, 64, "depth", "cube")
    assert list(alone.conditions) == ["depth"] and alone.scene.include == ("cube",)
    assert alone.prompt == generate(5, 64, ["depth"], ("cube",)).prompt


@pytest.mark.parametrize("condition", sorted(MAP_SHOWS_ONLY))
def test_objects_a_map_does_not_show_leave_no_trace_in_it(condition):
    shown, checked = MAP_SHOWS_ONLY[condition], 0
    for seed in range(40):
        scene = sample_scene(seed)
        hidden = tuple(obj for obj in scene.objects if obj.kind not in shown)
        if not hidden:
            continue
        only_hidden, empty = (replace(scene, objects=o) for o in (hidden, ()))
        drawn, bare = (
            CONDITION_MAPS[condition](s, render(s, 128)).any(axis=2) for s in (only_hidden, empty)
        )
        assert not (drawn & ~bare).any(), (seed, [obj.kind for obj in hidden])
        checked += 1
    assert checked > 10


def test_only_a_map_blank_without_a_kind_has_its_training_scenes_hold_one():
    assert training_kinds("pose") == ("person",)
    assert training_kinds("hough") == ()  # its map still holds the horizon
    assert "sphere" not in MAP_SHOWS_ONLY["hough"] and "cube" in MAP_SHOWS_ONLY["hough"]
