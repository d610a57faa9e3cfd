"""The control variants registered for the measured precondition bases differ from them in the mechanism only."""

import pytest

from forklens.organisms import get_family


@pytest.mark.parametrize("family, base, control, field, base_value, control_value", [
    ("skills", "executor-adjacent", "adjacent-deaf", "p_follow", 1.0, 0.0),
    ("delegation", "parity", "parity-nosplit", "teacher_delegates", True, False),
    ("delegation", "split", "nosplit", "teacher_delegates", True, False),
    ("sort", "noisy", "uninformed", "p_noise", 0.3, 1.0),
    ("facts", "reading-long", "reading-long-untaught", "p_negated", 0.3, 0.0),
])
def test_control_is_its_base_with_one_teacher_setting_changed(family, base, control, field, base_value, control_value):
    fam = get_family(family)
    pre, ctl = fam.variant_config(base), fam.variant_config(control)
    assert fam.variant(control).role == "control"
    assert getattr(pre.task, field) == base_value and getattr(ctl.task, field) == control_value
    setattr(ctl.task, field, base_value)
    assert ctl == pre
