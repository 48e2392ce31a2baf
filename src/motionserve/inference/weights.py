"""Which checkpoint each model component comes from, and where it lies on disk.

The checkpoint map is configuration (`Settings.weights`):

- ``"real"``: the published checkpoints in `DEFAULT_MAP` (Hugging Face repo ids);
- ``"tiny"``: small random models built on first use under ``<data_dir>/models/tiny`` (tests, demos);
- a path to a JSON file: entries overriding `DEFAULT_MAP`, same shape. A value is a string (a repo id or
  a local folder/file) or ``{"source": ..., "file": ...}`` for single-file checkpoints kept inside a repo
  or folder. ``motion_loras`` is a nested object keyed by motion name. Relative local paths are resolved
  against the JSON file's folder; to be told apart from repo ids (``owner/name``) they must start with
  ``./`` or ``../`` (or be absolute, or ``~``).

Repo ids are resolved through huggingface_hub: the local HF cache first (no network), then a download
unless ``HF_HUB_OFFLINE=1``. A checkpoint that cannot be had raises `ModelUnavailableError` naming it and
saying how to get it. `pull(settings)` (``motionserve models pull``) fetches the entries ahead of time,
after checking that the hub lets this machine read every repository (SVD-XT 1.1 is gated: its licence
must be accepted on the hub and a token given).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Literal

from motionserve.config import Settings
from motionserve.errors import ModelUnavailableError
from motionserve.inference.motions import MOTIONS
from motionserve.inference.tiny import ensure_tiny_weights

Kind = Literal["pipeline", "model", "file"]

# What each entry is: a diffusers pipeline folder, a single diffusers model folder, or one file.
KINDS: dict[str, Kind] = {
    "sd15_base": "pipeline",
    "motion_adapter": "model",
    "animatelcm_adapter": "model",
    "animatelcm_lora": "file",
    "svd_base": "pipeline",
    "svd_lcm_unet": "file",
}

DEFAULT_MAP: dict[str, Any] = {
    "sd15_base": "emilianJR/epiCRealism",
    "motion_adapter": "guoyww/animatediff-motion-adapter-v1-5-2",
    "motion_loras": {m: f"guoyww/animatediff-motion-lora-{m}" for m in MOTIONS},
    "animatelcm_adapter": "wangfuyun/AnimateLCM",
    "animatelcm_lora": {"source": "wangfuyun/AnimateLCM", "file": "AnimateLCM_sd15_t2v_lora.safetensors"},
    "svd_base": "stabilityai/stable-video-diffusion-img2vid-xt-1-1",
    "svd_lcm_unet": {"source": "wangfuyun/AnimateLCM-SVD-xt", "file": "AnimateLCM-SVD-xt-1.1.safetensors"},
}

# The checkpoints each `ModelManager` pipeline group loads (the endpoints' `pipeline_group`), so that
# `models pull --endpoint ...` fetches only those. "motion_lora:*" stands for every motion LoRA.
GROUP_CHECKPOINTS: dict[str, tuple[str, ...]] = {
    "animatediff": ("sd15_base", "motion_adapter", "motion_lora:*"),
    "turbo": ("sd15_base", "animatelcm_adapter", "animatelcm_lora"),
    "svd_lcm": ("svd_base", "svd_lcm_unet"),
}

# Only the files the loaders read. A pipeline repo is model_index.json plus a folder per component; the
# AnimateDiff and SVD pipelines load these components (diffusers skips the others model_index.json
# names, e.g. SD's 1.2 GB safety_checker), in full precision safetensors (not .ckpt/.bin copies, not
# fp16/ema variants, not the single-file checkpoints some repos keep at their root).
_PIPELINE_PATTERNS = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*.json", "tokenizer/*.txt",
    "feature_extractor/preprocessor_config.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "image_encoder/config.json", "image_encoder/model.safetensors",
]
_MODEL_PATTERNS = ["config.json", "diffusion_pytorch_model.safetensors"]
# LoRA repos (motion LoRAs) hold one weights file whose name varies.
_LORA_PATTERNS = ["*.json", "*.safetensors"]


@dataclass(frozen=True)
class Checkpoint:
    """One entry of the map: `source` is a repo id or a local path; `file` a file inside it, if any."""

    name: str
    kind: Kind
    source: str
    file: str | None = None

    @property
    def is_local(self) -> bool:
        return _looks_local(self.source)

    def describe(self) -> str:
        return f"{self.source}/{self.file}" if self.file else self.source


def _looks_local(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or Path(source).exists()


class Checkpoints:
    """The resolved checkpoint map: `path(name)` gives a local folder or file for an entry."""

    def __init__(self, entries: dict[str, Checkpoint], cache_dir: Path | None = None) -> None:
        self._entries = entries
        self.cache_dir = cache_dir  # HF cache; None = huggingface_hub's default (HF_HOME)

    def __getitem__(self, name: str) -> Checkpoint:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no checkpoint named {name!r}; known: {sorted(self._entries)}") from None

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self._entries.values())

    def path(self, name: str, *, download: bool | None = None) -> Path:
        """Local folder (pipeline/model) or file for the entry, downloading it if allowed.

        `download=None` downloads unless HF_HUB_OFFLINE is set; False only looks in the cache.
        """
        return resolve(self[name], cache_dir=self.cache_dir, download=download)

    def motion_lora(self, motion: str) -> Checkpoint:
        return self[f"motion_lora:{motion}"]

    @classmethod
    def from_map(cls, raw: dict[str, Any], *, base_dir: Path | None = None, cache_dir: Path | None = None) -> "Checkpoints":
        entries: dict[str, Checkpoint] = {}
        for key, value in raw.items():
            if key == "motion_loras":
                for motion, spec in value.items():
                    name = f"motion_lora:{motion}"
                    entries[name] = _entry(name, "model", spec, base_dir)
            elif key in KINDS:
                entries[key] = _entry(key, KINDS[key], value, base_dir)
            else:
                raise ValueError(f"unknown checkpoint {key!r} in the weights map; known: {sorted(KINDS)} and motion_loras")
        return cls(entries, cache_dir)


def _entry(name: str, kind: Kind, spec: Any, base_dir: Path | None) -> Checkpoint:
    if isinstance(spec, str):
        source, file = spec, None
    elif isinstance(spec, dict) and isinstance(spec.get("source"), str):
        source, file = spec["source"], spec.get("file")
    else:
        raise ValueError(f"weights map entry {name!r} must be a string or {{'source': ..., 'file': ...}}, got {spec!r}")
    if source.startswith("~"):
        source = str(Path(source).expanduser())
    elif source.startswith(("./", "../")) and base_dir is not None:
        source = str((base_dir / source).resolve())
    if kind == "file" and file is None and not _looks_local(source):
        raise ValueError(f"weights map entry {name!r} is a single file: give {{'source': repo, 'file': name}}")
    return Checkpoint(name=name, kind=kind, source=source, file=file)


def merge_maps(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`; `motion_loras` is merged per motion rather than replaced."""
    merged = dict(base)
    for key, value in override.items():
        if key == "motion_loras" and isinstance(value, dict):
            merged[key] = {**base.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def load_checkpoints(weights: str, *, tiny_root: Path, cache_dir: Path | None = None) -> Checkpoints:
    """The checkpoint map for a `Settings.weights` value ("real", "tiny" or a JSON path)."""
    if weights == "real":
        return Checkpoints.from_map(DEFAULT_MAP, cache_dir=cache_dir)
    if weights == "tiny":
        map_path = ensure_tiny_weights(tiny_root) / "weights.json"
        return Checkpoints.from_map(_read_map(map_path), base_dir=map_path.parent, cache_dir=cache_dir)
    map_path = Path(weights).expanduser()
    override = _read_map(map_path)
    return Checkpoints.from_map(merge_maps(DEFAULT_MAP, override), base_dir=map_path.parent.resolve(), cache_dir=cache_dir)


def checkpoints_for(settings: Settings) -> Checkpoints:
    return load_checkpoints(settings.weights, tiny_root=settings.models_dir / "tiny")


def _read_map(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelUnavailableError(f"weights map {path} does not exist (weights must be 'real', 'tiny' or a JSON file)") from exc
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"weights map {path} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelUnavailableError(f"weights map {path} must be a JSON object")
    return raw


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _how_to_get(ckpt: Checkpoint) -> str:
    return (
        f"checkpoint {ckpt.name!r} ({ckpt.describe()}) is not available locally. Run `motionserve models pull` "
        f"with network access (unset HF_HUB_OFFLINE), or set a local folder for {ckpt.name!r} in a weights map "
        f"JSON passed with --weights"
    )


def resolve(ckpt: Checkpoint, *, cache_dir: Path | None = None, download: bool | None = None) -> Path:
    """A local path for the checkpoint: its folder, or its file when `file` is set."""
    if ckpt.is_local:
        path = Path(ckpt.source) / ckpt.file if ckpt.file else Path(ckpt.source)
        if not path.exists():
            raise ModelUnavailableError(f"checkpoint {ckpt.name!r}: local path {path} does not exist")
        return path
    return _from_hub(ckpt, cache_dir=cache_dir, download=download)


def _from_hub(ckpt: Checkpoint, *, cache_dir: Path | None, download: bool | None) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    if download is None:
        download = not hub_offline()

    def fetch(local_only: bool) -> Path:
        if ckpt.file:
            return Path(hf_hub_download(ckpt.source, ckpt.file, cache_dir=cache_dir, local_files_only=local_only))
        patterns = _PIPELINE_PATTERNS if ckpt.kind == "pipeline" else _MODEL_PATTERNS
        if ckpt.name.startswith("motion_lora:"):
            patterns = _LORA_PATTERNS
        return Path(snapshot_download(ckpt.source, cache_dir=cache_dir, allow_patterns=patterns, local_files_only=local_only))

    # The cache first: no network round trip for checkpoints that are already here.
    try:
        return fetch(local_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, HfHubHTTPError, OSError) as exc:
        if not download:
            raise ModelUnavailableError(_how_to_get(ckpt)) from exc
    except HFValidationError as exc:
        raise ModelUnavailableError(f"checkpoint {ckpt.name!r}: {ckpt.source!r} is neither a local path nor a repo id") from exc
    try:
        return fetch(local_only=False)
    except GatedRepoError as exc:
        from huggingface_hub import constants, get_token

        advice = _gated_advice(ckpt.source, constants.ENDPOINT, has_token=get_token() is not None)
        raise ModelUnavailableError(f"checkpoint {ckpt.name!r}: {advice}") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{_how_to_get(ckpt)} (download failed: {exc})") from exc


def lora_weights_file(path: Path) -> Path:
    """The weights file of a LoRA given as a file or a folder holding one `.safetensors` file."""
    if path.is_file():
        return path
    candidates = sorted(path.glob("*.safetensors"))
    for preferred in ("pytorch_lora_weights.safetensors", "diffusion_pytorch_model.safetensors"):
        if (path / preferred).exists():
            return path / preferred
    if len(candidates) == 1:
        return candidates[0]
    raise ModelUnavailableError(f"expected one .safetensors LoRA file in {path}, found {[c.name for c in candidates]}")


class LoraSourceError(ValueError):
    """A user-supplied LoRA cannot be found or fetched; the message is meant for the caller."""


def resolve_lora_source(source: str, *, local_root: Path | None = None, max_bytes: int | None = None) -> Path:
    """A LoRA weights file from the operator's LoRA folder or a hub repo id (optionally `owner/repo/file.safetensors`).

    Requests come from API-key holders, not the operator: a local path must name something inside
    `local_root` (the server's LoRA folder; none means local paths are refused), and a hub download
    larger than `max_bytes` is refused before it starts. URLs are not handled here: handlers fetch them
    through the request context (size caps, address checks).
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    local = _local_lora(source, local_root)
    if local is not None:
        try:
            return lora_weights_file(local)
        except ModelUnavailableError as exc:
            raise LoraSourceError(str(exc)) from exc
    parts = source.strip("/").split("/")
    if len(parts) < 2 or source.startswith(("/", ".", "~")):
        raise LoraSourceError(
            f"LoRA {source!r} is neither a file in this server's LoRA folder (MOTIONSERVE_LORA_DIR) nor a hub repo id (owner/name)"
        )
    repo, file = "/".join(parts[:2]), "/".join(parts[2:]) or None
    offline = hub_offline()
    try:
        if max_bytes is not None and not offline:
            _check_hub_lora_size(repo, file, max_bytes)
        if file:
            return Path(hf_hub_download(repo, file, local_files_only=offline))
        folder = snapshot_download(repo, allow_patterns=_LORA_PATTERNS, local_files_only=offline)
        return lora_weights_file(Path(folder))
    except _hub_transport_errors() as exc:
        # The hub is down or unreachable: not the request's fault (503), unlike a missing repo (422).
        raise ModelUnavailableError(
            f"LoRA {source!r} could not be fetched: the Hugging Face hub cannot be reached ({exc}). Try again"
            " later, or give the LoRA as a URL or a file in this server's LoRA folder"
        ) from exc
    except (HfHubHTTPError, HFValidationError, OSError, ModelUnavailableError) as exc:
        raise LoraSourceError(f"LoRA {source!r} could not be fetched from the hub: {exc}") from exc


def _hub_transport_errors() -> tuple[type[BaseException], ...]:
    """The connection errors huggingface_hub's HTTP client raises (httpx2 in current releases, httpx before)."""
    import httpx

    errors: list[type[BaseException]] = [httpx.TransportError]
    try:
        import httpx2

        errors.append(httpx2.TransportError)
    except ImportError:
        pass
    return tuple(errors)


def _local_lora(source: str, local_root: Path | None) -> Path | None:
    """`source` as an existing path inside `local_root`, or None. Relative paths are taken from the root."""
    if local_root is None:
        return None
    root = Path(local_root).resolve()
    candidate = Path(source).expanduser()
    candidate = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not candidate.exists():
        return None
    if not candidate.is_relative_to(root):  # resolve() has followed symlinks and "..", so this is the real place
        raise LoraSourceError(f"LoRA {source!r} is outside this server's LoRA folder (MOTIONSERVE_LORA_DIR)")
    return candidate


def _check_hub_lora_size(repo: str, file: str | None, max_bytes: int) -> None:
    """Refuse a hub LoRA bigger than the fetch cap before downloading a byte of it."""
    from huggingface_hub import HfApi

    api = HfApi()
    if file:
        entries = list(api.get_paths_info(repo, [file]))
    else:
        entries = [e for e in api.list_repo_tree(repo) if any(Path(e.path).match(p) for p in _LORA_PATTERNS)]
    size = sum(getattr(e, "size", 0) or 0 for e in entries)
    if size > max_bytes:
        raise LoraSourceError(f"LoRA {repo} is {size / 1e6:.0f} MB, over this server's limit of {max_bytes / 1e6:.0f} MB")


class HubAccessError(Exception):
    """Some repositories cannot be read from here; `problems` holds one line each, saying what to do."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def needed(checkpoints: Checkpoints, groups: Collection[str] | None = None) -> list[Checkpoint]:
    """The entries the given pipeline groups load (all of them for None), in map order."""
    if groups is None:
        return list(checkpoints)
    unknown = set(groups) - set(GROUP_CHECKPOINTS)
    if unknown:
        raise ValueError(f"unknown pipeline group(s) {sorted(unknown)}; known: {sorted(GROUP_CHECKPOINTS)}")
    names = {n for g in groups for n in GROUP_CHECKPOINTS[g]}
    return [c for c in checkpoints if c.name in names or ("motion_lora:*" in names and c.name.startswith("motion_lora:"))]


def check_access(entries: Collection[Checkpoint]) -> list[str]:
    """One line per hub repository of `entries` this machine may not read, saying what to do; [] if all may.

    Asks the hub's auth-check API (no file is downloaded). A hub that cannot be reached is one line.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    repos = list(dict.fromkeys(c.source for c in entries if not c.is_local))
    if repos and hub_offline():
        return ["HF_HUB_OFFLINE is set: `models pull` downloads from the Hugging Face hub; unset it"]
    api, token = HfApi(), get_token()
    problems: list[str] = []
    for repo in repos:
        try:
            api.auth_check(repo)
        except GatedRepoError:
            problems.append(_gated_advice(repo, constants.ENDPOINT, has_token=token is not None))
        except RepositoryNotFoundError:
            # The hub answers so for a private repo too, when the token (if any) may not read it.
            problems.append(f"{repo}: not found on the hub (or private to others): check the weights map (--weights)")
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 401:
                problems.append(f"{repo}: the hub refused the token (HTTP 401): set a valid HF_TOKEN or run `hf auth login`")
            else:
                problems.append(f"{repo}: the hub answered HTTP {status}: {str(exc).splitlines()[0]}")
        except (*_hub_transport_errors(), OfflineModeIsEnabled, OSError) as exc:
            problems.append(f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({type(exc).__name__}: {exc}); check the network or HF_ENDPOINT")
            break  # every other repository would say the same
    return problems


def _gated_advice(repo: str, endpoint: str, *, has_token: bool) -> str:
    page = f"{endpoint}/{repo}"
    if has_token:
        return f"{repo}: gated, and the account of your token has not been granted access: accept the licence at {page} with that account"
    return f"{repo}: gated: accept the licence at {page}, then set HF_TOKEN or run `hf auth login`"


def pull(settings: Settings, log: Callable[[str], None] = print, *, groups: Collection[str] | None = None) -> dict[str, Path]:
    """Fetch the checkpoints the pipeline `groups` load (all for None) into the local cache (``models pull``).

    Every hub repository is checked first; raises HubAccessError, having downloaded nothing, when any
    cannot be read.
    """
    checkpoints = checkpoints_for(settings)
    entries = needed(checkpoints, groups)
    problems = check_access(entries)
    if problems:
        raise HubAccessError(problems)
    paths: dict[str, Path] = {}
    for ckpt in entries:
        log(f"{ckpt.name}: {ckpt.describe()} ...")
        paths[ckpt.name] = resolve(ckpt, cache_dir=checkpoints.cache_dir, download=True)
        log(f"{ckpt.name}: {paths[ckpt.name]}")
    return paths
