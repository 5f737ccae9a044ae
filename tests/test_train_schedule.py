"""The from-scratch trainers' learning-rate schedule (warm-up, constant, linear cool-down) and
what a resumed run makes of settings changed since its checkpoint."""

from __future__ import annotations

import pytest

from cnet.train.schedule import lr_factor, schedules_after_resume


def test_warmup_then_constant_then_cooldown_to_zero():
    factors = [lr_factor(step, 100, warmup_steps=10, cooldown_steps=20) for step in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == 1.0 and factors[50] == 1.0 and factors[80] == 1.0
    assert factors[90] == pytest.approx(0.5)
    assert factors[99] == pytest.approx(0.05)
    assert factors[80:] == sorted(factors[80:], reverse=True)
    assert factors[:10] == sorted(factors[:10])


def test_no_warmup_or_cooldown_is_constant_and_past_the_end_is_zero():
    assert {lr_factor(step, 10, 0, 0) for step in range(10)} == {1.0}
    assert lr_factor(12, 10, 0, 5) == 0.0


def test_a_longer_run_moves_the_cooldown_to_its_new_end():
    assert lr_factor(5_500, 6_000, 200, 1_000) == pytest.approx(0.5)
    assert lr_factor(5_500, 8_000, 200, 1_000) == 1.0


def test_a_field_newer_than_the_checkpoint_adds_no_stretch_until_its_settings_change():
    fields = ("learning_rate", "cooldown_steps")
    older = {"step": 300, "schedules": [{"from_step": 0, "learning_rate": 1e-4}]}
    same = {"learning_rate": 1e-4, "cooldown_steps": 0}
    assert schedules_after_resume(older, same, fields) == older["schedules"]
    cooler = {"learning_rate": 5e-5, "cooldown_steps": 200}
    assert schedules_after_resume(older, cooler, fields)[-1] == {"from_step": 300, **cooler}
    before_records = {"step": 300, "config": {"learning_rate": 1e-4}}
    assert schedules_after_resume(before_records, same, fields) == [
        {"from_step": 0, "learning_rate": 1e-4}
    ]


def test_changed_settings_name_what_differs_from_the_checkpoint_as_json_would_hold_it():
    from cnet.train.checkpoint import changed_settings

    saved = {"conditions": ["canny", "depth"], "steps": 100, "resume": None, "lr": 1e-4}
    now = {"conditions": ("canny", "depth"), "steps": 200, "resume": "latest", "new": 1}
    assert changed_settings(saved, now, ignore=("resume",)) == {"steps": (100, 200)}


def test_a_diverged_loss_says_what_to_lower_and_bf16_only_under_fp16():
    from cnet.train.schedule import diverged

    plain = str(diverged("unet loss", float("nan"), 7, "--unet-learning-rate", "no"))
    assert plain == "The unet loss became nan at step 7; lower --unet-learning-rate."
    half = str(diverged("loss", float("inf"), 2, "--learning-rate", "fp16"))
    assert half.endswith("lower --learning-rate, or use --mixed-precision bf16.")
