"""What a start compiled, in one file that spares the first start on another machine the compiling.

With warm caches a start only traces (5-6 s on an H200); with empty ones, as for the first pod on
a new node, Inductor compiles the decoder's and vision blocks' graphs and Triton the decode-attention
kernels: 22 s more. The file holds Inductor's part as ``torch.compiler.save_cache_artifacts`` writes
it (which checks the torch and Triton versions and the GPU when loaded) and the attention kernels as
entries of Triton's own cache, which Inductor's part does not cover. Its name is a digest of what
the compiled code depends on, so another GPU, library version, checkpoint shape or engine release
writes a file of its own instead of loading one that would not fit.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TORCH_PART = "torch-cache-artifacts.bin"
TRITON_PART = "triton-cache"


def triton_cache_dir() -> Path:
    """Where Triton keeps compiled kernels here (``TRITON_CACHE_DIR`` when set)."""
    from triton import knobs

    return Path(knobs.cache.dir)


class CompileArtifacts:
    def __init__(self, directory: str | Path, key: str):
        self.path = Path(directory) / f"compile-{key}.zip"
        self.outcome = "not used"  # what the start did with the file: the ready log line says it

    def __str__(self) -> str:
        return f"{self.outcome}: {self.path}"

    @classmethod
    def for_engine(cls, directory: str | Path, device: torch.device, depends_on: Mapping[str, object]) -> "CompileArtifacts":
        """``depends_on``: what the compiled code's shapes come from (checkpoint config, dtype, cache size)."""
        import triton

        props = torch.cuda.get_device_properties(device)
        sources = sorted(Path(__file__).parent.glob("*.py"))
        return cls(directory, artifact_key({
            "torch": torch.__version__, "triton": triton.__version__, "gpu": props.name,
            "capability": [props.major, props.minor],
            "engine": hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest(), **depends_on}))

    def load(self) -> bool:
        """Fill this machine's compile caches from the file. False when there is none, or it cannot be
        read: the start then compiles, as it would without one."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                torch.compiler.load_cache_artifacts(archive.read(TORCH_PART))
                kernels = _restore_triton_entries(archive, triton_cache_dir())
        except FileNotFoundError:
            self.outcome = "missing"
            return False
        except Exception:
            log.warning("compile artifacts %s could not be loaded: compiling instead", self.path, exc_info=True)
            self.outcome = "unreadable"
            return False
        log.info("compile caches filled from %s (%d Triton kernels)", self.path, kernels)
        self.outcome = "loaded"
        return True

    def save(self, kernels: Iterable[str]) -> bool:
        """Write what this process compiled, with Triton's cache entries of ``kernels`` (function names).

        Written under another name and renamed, so that a start reading the file never sees half of it.
        False, with a warning, when there is nothing to write or the directory takes no file."""
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            log.warning("torch.compile recorded nothing to save in %s", self.path)
            return False
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(TORCH_PART, artifacts[0])
            _add_triton_entries(archive, triton_cache_dir(), set(kernels))
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path.parent, prefix=".compile-", delete=False) as tmp:
                tmp.write(buffer.getvalue())
            os.chmod(tmp.name, 0o644)  # others may read it: kubectl cp, a pod of another user
            os.replace(tmp.name, self.path)
        except OSError as exc:
            log.warning("compile artifacts could not be written to %s: %s", self.path, exc)
            if tmp is not None:
                Path(tmp.name).unlink(missing_ok=True)
            return False
        log.info("compile artifacts written to %s (%.1f MB)", self.path, len(buffer.getvalue()) / 1e6)
        self.outcome = "written"
        return True


def artifact_key(facts: Mapping[str, object]) -> str:
    """The GPU's name, readable, and a digest of every fact but where the checkpoint lies."""
    digest = hashlib.sha256(json.dumps(_portable(facts), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', str(facts.get('gpu', ''))).strip('-').lower()}-{digest}"


def _portable(value):
    """``value`` without where the checkpoint lies on this machine (configs keep their path)."""
    if isinstance(value, Mapping):
        return {str(k): _portable(v) for k, v in value.items() if k != "_name_or_path"}
    return value


def _add_triton_entries(archive: zipfile.ZipFile, cache: Path, kernels: set[str]) -> None:
    """Each cache entry (one folder per compiled kernel) that holds one of ``kernels``."""
    for entry in sorted(p for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else ():
        if any((entry / f"{name}.json").exists() for name in kernels):
            for file in entry.iterdir():
                if file.is_file():
                    archive.write(file, f"{TRITON_PART}/{entry.name}/{file.name}")


def _restore_triton_entries(archive: zipfile.ZipFile, cache: Path) -> int:
    """Triton's entries, into this machine's cache. A kernel's group file names its other files by
    absolute path, so those paths are made this cache's."""
    entries = set()
    for name in archive.namelist():
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != TRITON_PART:
            continue
        entry, file = cache / parts[1], parts[2]
        data = archive.read(name)
        if file.startswith("__grp__"):
            group = json.loads(data)
            group["child_paths"] = {child: str(entry / Path(path).name) for child, path in group["child_paths"].items()}
            data = json.dumps(group).encode()
        entry.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=entry, prefix=".restore-", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, entry / file)
        entries.add(parts[1])
    return len(entries)
