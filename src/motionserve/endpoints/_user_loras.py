"""User LoRAs for the turbo endpoint: where a `LoraWeight.path` points, and loading it for one request.

A path is one of:
- an ``http(s)://`` or ``data:`` URL, fetched through the service's safe fetcher (size/time caps,
  address checks) by `ctx.read_input`;
- a local path to a `.safetensors` file or a folder holding one, or a Hugging Face repo id ``owner/name``
  (optionally ``owner/name/file.safetensors``), resolved by the ModelManager (`ctx.models.resolve_lora`:
  HF cache first, download unless ``HF_HUB_OFFLINE=1``).

Only safetensors are accepted: pickled checkpoints (.bin/.ckpt/.pt) from an untrusted source can run
code when loaded. Every failure becomes a 422 on ``loras.<i>.path`` saying what is wrong.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from motionserve.errors import InputValidationError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from motionserve.endpoints.base import RunContext

_URL_PREFIXES = ("http://", "https://", "data:")
_MAX_MESSAGE = 300  # diffusers' shape-mismatch errors list every layer; keep the 422 readable


def _error(index: int, message: str, value: str) -> InputValidationError:
    return InputValidationError.for_field(("loras", index, "path"), message, input=value)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def read_lora(path: str, index: int, ctx: "RunContext") -> dict[str, "torch.Tensor"]:
    """The LoRA state dict `path` points to. Raises InputValidationError on `loras.<index>.path`."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes
    from safetensors.torch import load_file

    path = path.strip()
    if path.startswith(_URL_PREFIXES):
        try:
            data = ctx.read_input(path, "loras")
        except InputValidationError as exc:
            detail = exc.errors[0].get("msg", exc.message) if exc.errors else exc.message
            raise _error(index, f"The LoRA could not be downloaded: {detail}", path) from exc
        try:
            return load_bytes(data)
        except (SafetensorError, ValueError, OSError) as exc:
            raise _error(index, f"The LoRA at this URL is not a .safetensors file: {_short(exc)}", path) from exc

    try:
        file = ctx.models.resolve_lora(path)  # local file/folder or hub repo id (ModelManager)
    except ValueError as exc:  # LoraSourceError: a user-facing message
        raise _error(index, _short(exc), path) from exc
    if file.suffix != ".safetensors":
        raise _error(index, f"Only .safetensors LoRA files are accepted, got {file.name}.", path)
    try:
        return load_file(str(file))
    except (SafetensorError, ValueError, OSError) as exc:
        raise _error(index, f"{file.name} is not a readable .safetensors file: {_short(exc)}", path) from exc


@contextmanager
def user_loras(
    pipe: "DiffusionPipeline",
    loras: Sequence[Any],
    ctx: "RunContext",
    *,
    base_adapter: str,
    base_scale: float,
) -> Iterator[list[str]]:
    """Load `loras` (items with `.path` and `.scale`) beside the pipeline's own `base_adapter` for one request.

    The adapters are combined as `[base_adapter, *users]` with weights `[base_scale, *scales]`. On exit,
    success or failure, the user adapters are deleted and `base_adapter` alone is active again at
    `base_scale`, so the warm pipeline is clean for the next request.
    """
    names: list[str] = []
    try:
        for i, lora in enumerate(loras):
            state = read_lora(lora.path, i, ctx)
            name = f"user-{i}"
            names.append(name)  # before loading: a failed load can leave half-injected layers to delete
            before = set(_adapters(pipe))
            try:
                pipe.load_lora_weights(state, adapter_name=name)
            except (ValueError, KeyError, RuntimeError, TypeError) as exc:
                raise _error(i, f"The LoRA does not fit this model (an SD1.5 LoRA is expected): {_short(exc)}", lora.path) from exc
            if name not in set(_adapters(pipe)) - before:
                raise _error(i, "The file holds no LoRA weights for this model's UNet or text encoder.", lora.path)
            ctx.raise_if_cancelled()
        if names:
            pipe.set_adapters([base_adapter, *names], adapter_weights=[base_scale, *(float(l.scale) for l in loras)])
        yield names
    finally:
        if names:
            pipe.delete_adapters(names)
            for component in (pipe.unet, pipe.text_encoder):
                _unwrap_emptied_layers(component)
            pipe.set_adapters([base_adapter], adapter_weights=[base_scale])


def _adapters(pipe: "DiffusionPipeline") -> list[str]:
    return [name for names in pipe.get_list_adapters().values() for name in names]


def _unwrap_emptied_layers(model: "torch.nn.Module") -> None:
    """Put back the plain layer wherever deleting adapters left a peft wrapper holding none.

    `delete_adapters` keeps the wrapper around the original layer. Harmless for inference, but a user
    LoRA on the motion modules would leave wrappers there, and FreeNoise (toggled per request for long
    clips) rebuilds those blocks from a state dict that must have plain layer names.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    emptied = [
        name
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and all(len(getattr(module, attr)) == 0 for attr in module.adapter_layer_names)
    ]
    for name in emptied:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, model.get_submodule(name).get_base_layer())
