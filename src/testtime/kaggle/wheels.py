"""What a bundle's wheels are for and what they need: targets, wheel tags, requirement closures.

    target = Target.of("3.11", "manylinux_2_35_x86_64")   # Kaggle's images (Ubuntu 22.04, glibc 2.35)
    target.accepts(Path("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"))
    reached, unmet = closure(["testtime[ray]==0.1.0"], dists, target.environment())

Both `bundle` (over pip's resolution report) and `check` (over the wheels' own METADATA) walk the
same closure, so what one puts in is what the other looks for.
"""

from __future__ import annotations

import email.parser
import hashlib
import re
import sys
import zipfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging import tags
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from testtime.kaggle import BundleError

LEGACY_MANYLINUX = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
"""PEP 600's aliases: the old manylinux names and the glibc version each stands for."""

SYSTEMS = {"linux": ("linux", "Linux", "posix"), "manylinux": ("linux", "Linux", "posix"),
           "musllinux": ("linux", "Linux", "posix"), "macosx": ("darwin", "Darwin", "posix"),
           "win": ("win32", "Windows", "nt")}
"""A platform tag's prefix -> the markers sys_platform, platform_system and os_name there."""


@dataclass(frozen=True)
class Target:
    """The interpreter a bundle is for: CPython `python_version` on wheel platform `platform`."""

    python_version: str
    """`3.11`"""
    platform: str
    """The most specific platform tag it runs, e.g. `manylinux_2_35_x86_64`."""
    host: bool = False
    """This interpreter: pip resolves for it without target flags (and accepts `linux_*` wheels)."""

    @classmethod
    def here(cls) -> Target:
        platforms = list(tags.platform_tags())  # linux_x86_64 first on Linux: name the manylinux one
        platform = next((p for p in platforms if not p.startswith("linux_")), platforms[0])
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}", platform, True)

    @classmethod
    def of(cls, python_version: str | None = None, platform: str | None = None) -> Target:
        """A target from the command's flags; None keeps this interpreter's. Raises BundleError naming the flag."""
        here = cls.here()
        problems = []
        if python_version is not None and not re.fullmatch(r"3\.\d{1,2}", python_version):
            problems.append(f"--python-version {python_version!r}: give MAJOR.MINOR, e.g. 3.11")
        if platform is not None and not re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", platform):
            problems.append(f"--platform {platform!r}: give a wheel platform tag, e.g. manylinux_2_35_x86_64 "
                            "(Kaggle's images), macosx_11_0_arm64 or win_amd64")
        if problems:
            raise BundleError("; ".join(problems))
        target = cls(python_version or here.python_version, platform or here.platform)
        return here if target == cls(here.python_version, here.platform) else target

    @classmethod
    def from_json(cls, data: object) -> Target | None:
        if isinstance(data, dict) and isinstance(data.get("python_version"), str) and isinstance(
                data.get("platform"), str):
            return cls(data["python_version"], data["platform"], bool(data.get("host")))
        return None

    def to_json(self) -> dict[str, object]:
        return {"python_version": self.python_version, "platform": self.platform, "host": self.host}

    def __str__(self) -> str:
        return f"Python {self.python_version} on {self.platform}"

    def platforms(self) -> list[str]:
        """Every platform tag the target runs, most specific first (pip takes only the tags it is given)."""
        return expand_platform(self.platform)

    def pip_args(self) -> list[str]:
        """The flags that make `pip download` / `pip install --dry-run` resolve for this target."""
        if self.host:
            return []
        return ["--python-version", self.python_version, "--implementation", "cp",
                *[arg for p in self.platforms() for arg in ("--platform", p)]]

    def supported(self) -> frozenset[tags.Tag]:
        version = tuple(int(x) for x in self.python_version.split("."))
        platforms = self.platforms()
        return frozenset([*tags.cpython_tags(version, platforms=platforms),
                          *tags.compatible_tags(version, f"cp{''.join(map(str, version))}", platforms)])

    def accepts(self, wheel: Path | str) -> bool:
        """Whether pip on the target would install this wheel file (by its file name's tags)."""
        return bool(parse_wheel_filename(Path(wheel).name)[3] & self.supported())

    def environment(self) -> dict[str, str]:
        """The marker environment (PEP 508) on the target: this interpreter's, with the version and system
        of the target (a patch level the target may not have is taken as .0)."""
        env = dict(default_environment())
        if self.host:
            return env
        prefix, _, arch = self.platform.partition("_")
        arch = re.sub(r"^(\d+_)*", "", arch)  # manylinux_2_35_x86_64 -> x86_64
        sys_platform, system, os_name = next((v for k, v in SYSTEMS.items() if prefix.startswith(k)),
                                             (env["sys_platform"], env["platform_system"], env["os_name"]))
        env.update(python_version=self.python_version, python_full_version=f"{self.python_version}.0",
                   implementation_version=f"{self.python_version}.0", implementation_name="cpython",
                   platform_python_implementation="CPython", sys_platform=sys_platform, platform_system=system,
                   os_name=os_name, platform_machine="AMD64" if self.platform == "win_amd64" else arch)
        return env


def expand_platform(platform: str) -> list[str]:
    """`manylinux_2_35_x86_64` -> itself, every older glibc down to 2_5, the legacy aliases and
    `linux_x86_64` (what a wheel built on that machine is tagged); `macosx_11_0_arm64` -> every macOS
    it runs; anything else -> itself."""
    found = re.fullmatch(r"(manylinux|musllinux)_(\d+)_(\d+)_(\w+)", platform)
    if found:
        kind, major, minor, arch = found[1], int(found[2]), int(found[3]), found[4]
        out = [f"{kind}_{major}_{m}_{arch}" for m in range(minor, -1, -1)]
        if kind == "manylinux":
            out += [f"{name}_{arch}" for name, glibc in LEGACY_MANYLINUX.items() if glibc <= (major, minor)]
        return out + [f"linux_{arch}"]
    found = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", platform)
    if found:
        major, minor = LEGACY_MANYLINUX[found[1]]
        return expand_platform(f"manylinux_{major}_{minor}_{found[2]}")
    found = re.fullmatch(r"macosx_(\d+)_(\d+)_(\w+)", platform)
    if found:
        return list(tags.mac_platforms((int(found[1]), int(found[2])), found[3]))
    return [platform]


# --- distributions and their requirements --------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """One distribution as a resolver sees it: its name, version and `Requires-Dist` lines."""

    name: str
    version: str
    requires: tuple[str, ...] = ()


def wheel_dist(path: Path) -> Dist:
    """A wheel's name and version (from its file name) and its requirements (from its METADATA).
    Raises BundleError naming the file when it is not a readable wheel."""
    try:
        name, version, _, _ = parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as wheel:
            metadata = [n for n in wheel.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(metadata) != 1:
                raise BundleError(f"{path.name}: {len(metadata)} .dist-info/METADATA files, a wheel has one")
            message = email.parser.BytesParser().parsebytes(wheel.read(metadata[0]), headersonly=True)
    except InvalidWheelFilename as err:
        raise BundleError(f"{path.name}: not a wheel file name ({err})") from None
    except (OSError, zipfile.BadZipFile) as err:
        raise BundleError(f"{path.name}: not a readable wheel ({err})") from None
    return Dist(str(name), str(version), tuple(message.get_all("Requires-Dist") or ()))


def closure(roots: Iterable[str], dists: Mapping[str, Dist], environment: Mapping[str, str],
            provided: Collection[str] = ()) -> tuple[set[str], list[tuple[str, str]]]:
    """The distributions (canonical names) that installing `roots` needs, following each one's
    requirements whose markers hold in `environment` (with the extras asked of it), and the
    requirements nothing in `dists` meets: (canonical name, `tokenizers>=0.22 (for transformers 5.25.0)`).
    Names in `provided` (torch, on Kaggle's images) are neither followed nor reported."""
    provided = {canonicalize_name(p) for p in provided}
    extras: dict[str, set[str]] = {}
    unmet: set[tuple[str, str]] = set()
    queue = [(root, "requested") for root in roots]
    while queue:
        line, wanted_by = queue.pop()
        try:
            req = Requirement(line)
        except InvalidRequirement as err:
            unmet.add((line, f"{line} (for {wanted_by}: not a valid requirement: {err})"))
            continue
        key = canonicalize_name(req.name)
        if key in provided:
            continue
        dist = dists.get(key)
        if dist is None or not req.specifier.contains(dist.version, prereleases=True):
            have = f"; the bundle has {dist.version}" if dist is not None else ""
            unmet.add((key, f"{req} (for {wanted_by}{have})"))
            continue
        if key in extras and set(req.extras) <= extras[key]:
            continue
        asked = extras.setdefault(key, set())
        asked |= set(req.extras)
        for sub in dist.requires:
            if _applies(sub, asked, environment):
                queue.append((sub, f"{dist.name} {dist.version}"))
    return set(extras), sorted(unmet)


def _applies(line: str, extras: set[str], environment: Mapping[str, str]) -> bool:
    try:
        marker = Requirement(line).marker
    except InvalidRequirement:
        return True  # followed, so that closure() reports it
    return marker is None or any(marker.evaluate({**environment, "extra": e}) for e in ("", *extras))


def member_sha256(wheel: Path, member: str) -> str:
    """SHA-256 of one file inside a wheel (a zip); raises KeyError when it is not there."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
