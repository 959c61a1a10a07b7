"""CLIP contrastive pretraining of the tiny CLIP (``mvpseg-tiny``) from scratch on the synthetic world.

::

    python -m mvpseg.world.pretrain --out runs/tiny-clip --steps 3000 --batch-size 64 --curriculum-steps 400 \
        --stuff-only-fraction 0.25 --stuff-twin-fraction 0.5 --warmup 100 --pool 20000 --threads 2

(the shipped weights' recipe: 36 minutes on 2 idle CPU cores).

A pool of world scenes is drawn once (in ``--threads`` processes, :mod:`mvpseg.world.pool`), half of
them as *twin pairs* that land in the same batch: hard negatives that only the changed word separates.
Training starts with ``--curriculum-steps`` of one-thing images whose captions never name the
stuff together with the thing, then the full mix. Throughout, ``--stuff-only-fraction`` of the
captions name the stuff alone. A caption naming one kind of class only cannot be matched by the
other kind: without these, the text tower collapses the words of whichever kind the image tower
has not learned yet (the things first, or after the curriculum the stuff; see NOTES.md). Captions are re-sampled from each image's class areas every time
it is used, images are flipped and rotated by multiples of 90 degrees. The loss is CLIP's symmetric
InfoNCE with a learnable temperature; AdamW with linear warm-up and cosine decay; bf16 autocast on
the CPU. Every class is named in captions, unseen ones included (as real CLIP saw every word).

Writes to ``--out``: ``mvpseg-tiny.safetensors`` (an open_clip ``CLIP`` state dict, fp16, written
atomically), ``pretrain_log.csv`` and ``pretrain_config.json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from tqdm import tqdm

from mvpseg.files import atomic_write
from mvpseg.stems import ResNetStem, attach_stem
from mvpseg.world.pool import batch_indices, caption_from_counts, draw_pool, is_stuff_twin
from mvpseg.world.registry import get_world

__all__ = ["PretrainConfig", "pretrain", "main", "TINY_CONFIG_PATH", "WEIGHTS_NAME", "STATE_NAME", "build_tiny_clip",
           "initial_state", "penultimate_map"]

TINY_CONFIG_PATH = Path(__file__).parent / "assets" / "mvpseg-tiny.json"
WEIGHTS_NAME = "mvpseg-tiny.safetensors"
STATE_NAME = "pretrain_state.safetensors"  # the whole training state (weights, AdamW moments, step, RNG)
_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


@dataclass
class PretrainConfig:
    """Pretraining settings; every field is a command-line flag of the same name."""

    out: str = "runs/tiny-clip"  # output directory
    model: str = "mvpseg-tiny"  # open_clip architecture name, or the path of a model config JSON
    world: str = "patterns"  # the world of the images and captions: patterns (the first) or parts
    init: str = ""  # start from these tiny-CLIP weights (safetensors; the attention pool's positions resized)
    init_towers: str = "all"  # what --init gives: all (the whole CLIP), text (text tower and temperature only) or text+stem (also a hybrid ViT's ResNet stages, from a ResNet CLIP's)
    freeze_stem: bool = False  # a hybrid ViT's ResNet stages (not its projection) keep their --init weights and BatchNorm statistics
    teacher: str = ""  # distil from this tiny CLIP's pooled image embedding (safetensors of --teacher-model)
    teacher_model: str = "mvpseg-tiny-parts"  # open_clip name or config JSON of --teacher
    distill_weight: float = 1.0  # weight of the distillation term, 1 - cos(student, teacher) per image
    distill_dense_weight: float = 0.0  # weight of dense distillation: the teacher's MaskCLIP features per cell against a ViT's tokens before its last block (through ln_post and proj), pooled to the teacher's grid
    steps: int = 6000  # optimisation steps
    batch_size: int = 128  # image-caption pairs per step
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.1  # on weights with 2+ dimensions only
    warmup: int = 200  # linear warm-up steps
    pool: int = 40000  # scenes drawn once and reused (uint8, about 49 KB each at 128 px)
    twin_fraction: float = 0.5  # share of each batch made of twin pairs (hard negatives)
    image_size: int = 128  # world image side, pixels (= the model's input size)
    curriculum_steps: int = 0  # first steps: only one-thing images, captions naming the thing alone
    stuff_only_fraction: float = 0.0  # share of captions naming the stuff alone (never for thing twins)
    stuff_twin_fraction: float = 0.0  # share of twin pairs that change the stuff instead of a thing
    seed: int = 0  # seeds the pool, the batch order, captions and the initialisation
    threads: int = 1  # torch threads, and processes drawing the pool
    bf16: bool = False  # bf16 autocast: faster only on CPUs with AVX512-BF16 or AMX, far slower on AVX2
    log_every: int = 10  # CSV log interval, steps
    save_every: int = 500  # also write the weights and the training state every this many steps (0: only at the end)
    resume: bool = True  # continue from the training state in --out when there is one
    progress: bool = True  # tqdm bar


def build_tiny_clip(name: str = "mvpseg-tiny") -> torch.nn.Module:
    """A randomly initialised open_clip CLIP of a registered name or of a config JSON's path (with the
    convolutional stem :data:`mvpseg.stems.STEMS` declares for its name, if any)."""
    if name.endswith(".json"):
        open_clip.add_model_config(name)
        name = Path(name).stem
    elif name not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG_PATH.parent)  # the tiny CLIPs of every world
    return attach_stem(open_clip.create_model(name), name)


def model_name(name: str) -> str:
    """The open_clip name of a registered name or of a config JSON's path."""
    return Path(name).stem if name.endswith(".json") else name


def _augment(images: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations; (B, H, W, 3) uint8 -> (B, 3, H, W) normalised float."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        image = np.rot90(image, k=int(rng.integers(4)))
        out[i] = image[:, ::-1] if rng.random() < 0.5 else image
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)  # (B, H, W, 3) -> (B, 3, H, W)
    return (x - _MEAN) / _STD


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float32 normalised with CLIP's mean and std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)  # -> (B, 3, H, W)
    return (x - _MEAN) / _STD


# ----------------------------------------------------------------------------- training


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "logit_scale" in name or "positional_embedding" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, config: PretrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write safetensors bytes into our own atomic file (the user's normal permissions)."""
    payload = save(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(payload))


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write an open_clip state dict as fp16 safetensors, atomically (:func:`mvpseg.files.atomic_write`)."""
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }
    _write_safetensors(path, state, metadata or {})


def initial_state(model: torch.nn.Module, path: str | Path, towers: str = "all") -> dict[str, torch.Tensor]:
    """Weights of ``path`` (a tiny-CLIP safetensors file) shaped for ``model``.

    The attention pool's positional embedding, ``(1 + g*g, W)``, is resized bicubically to the model's
    grid, so weights pretrained at one image size start a model of another. Other shapes must match.
    With ``towers="text"`` only the text tower and the temperature come from ``path`` (every key not
    under ``visual.``); the image tower keeps ``model``'s own initialisation, which may be of another
    kind (a ViT started beside a ResNet CLIP's text tower). ``towers="text+stem"`` also gives a hybrid ViT's
    ResNet stages (:class:`mvpseg.stems.ResNetStem`, ``visual.conv1.trunk.*``) the ResNet CLIP's own
    (``visual.*`` of ``path``); the stem's projection and the transformer keep ``model``'s.
    """
    if towers not in ("all", "text", "text+stem"):
        raise ValueError(f"init_towers must be 'all', 'text' or 'text+stem', not {towers!r}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    target = model.state_dict()
    if towers in ("text", "text+stem"):
        source = state
        state = {k: v for k, v in source.items() if not k.startswith("visual.")}
        state.update({k: v for k, v in target.items() if k.startswith("visual.")})
        if towers == "text+stem":
            trunk = "visual.conv1.trunk."
            stages = [k for k in target if k.startswith(trunk)]
            missing = ["visual." + k[len(trunk):] for k in stages if "visual." + k[len(trunk):] not in source]
            if not stages or missing:
                why = "the model has no ResNet stem" if not stages else "it lacks " + ", ".join(missing[:3])
                raise ValueError(f"{path} cannot start a hybrid ViT's stem ({why}): use --init-towers text+stem with "
                                 "a ResNet CLIP's weights and a model declared in mvpseg.stems.STEMS")
            state.update({k: source["visual." + k[len(trunk):]] for k in stages})
    key = "visual.attnpool.positional_embedding"
    if key in state and key in target and state[key].shape != target[key].shape:
        positions = state[key]
        side, new_side = math.isqrt(positions.shape[0] - 1), math.isqrt(target[key].shape[0] - 1)
        grid = positions[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (g*g, W) -> (1, W, g, g)
        grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(new_side * new_side, -1)  # (1, W, g', g') -> (g'*g', W)
        state[key] = torch.cat([positions[:1], grid], dim=0)
    wrong = [k for k in target if k in state and state[k].shape != target[k].shape]
    if wrong or set(state) != set(target):
        raise ValueError(f"{path} does not fit the model {sorted(set(target) ^ set(state))[:5]} {wrong[:5]}: "
                         "start from weights of the same architecture")
    return state


def _save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                rng: np.random.Generator, running: float | None) -> None:
    """The whole training state in one safetensors file: fp32 weights, AdamW's moments, step, RNG."""
    tensors = {f"model.{k}": v.detach().float().contiguous() if v.is_floating_point() else v.detach().contiguous()
               for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).contiguous()
    metadata = {"step": str(step), "rng": json.dumps(rng.bit_generator.state),
                "running": "" if running is None else repr(running)}
    _write_safetensors(path, tensors, metadata)


def _load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                rng: np.random.Generator) -> tuple[int, float | None]:
    """Restore :func:`_save_state`'s file into the model, the optimiser and the RNG; returns (step, running)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    channels_last = hasattr(model.visual, "attnpool")
    model.load_state_dict(model_state, strict=True)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer_state = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer_state["state"] = state
    optimizer.load_state_dict(optimizer_state)
    rng.bit_generator.state = json.loads(metadata["rng"])
    running = float(metadata["running"]) if metadata.get("running") else None
    return int(metadata["step"]), running


def penultimate_map(visual: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """A ViT's tokens before its last block, (B, 1 + h*w, W), through ``ln_post`` and ``proj`` (the map the CLS
    token's embedding takes) as a map of its square grid: (B, D, h, w)."""
    batch, count = tokens.shape[0], tokens.shape[1] - 1
    side = math.isqrt(count)
    vit: Any = visual  # open_clip's VisionTransformer: untyped, its parts are attributes set at run time
    patches = vit.ln_post(tokens[:, 1:]) @ vit.proj  # (B, h*w, D)
    return patches.transpose(1, 2).reshape(batch, -1, side, side)  # (B, h*w, D) -> (B, D, h, w)


def _dense_distillation(visual: torch.nn.Module, tokens: torch.Tensor, teacher: torch.nn.Module,
                        images: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between the teacher's dense MaskCLIP features and a ViT's tokens before its last block.

    ``tokens`` (B, 1 + h*w, W), the output of the ViT's penultimate block, become :func:`penultimate_map` and
    are average-pooled to the teacher's grid. The last block is left to the contrastive and pooled terms, as
    CLIP's is trained.
    """
    from mvpseg.dense import dense_features

    with torch.no_grad():
        target = F.normalize(dense_features(teacher, images).float(), dim=1)  # (B, D, h', w')
    patches = penultimate_map(visual, tokens)  # (B, D, h, w)
    pooled = F.normalize(F.adaptive_avg_pool2d(patches, (target.shape[-2], target.shape[-1])), dim=1)  # (B, D, h', w')
    return (1 - (pooled * target).sum(dim=1)).mean()


def pretrain(config: PretrainConfig) -> Path:
    """Pretrain the tiny CLIP; returns the path of the written weights.

    Every ``save_every`` steps the weights and the whole training state are written (atomically); with
    ``resume`` a run started again with the same settings continues from that state, drawing the same
    batches as an uninterrupted run.

    Args:
        config: the settings (see :class:`PretrainConfig`).

    Returns:
        ``<out>/mvpseg-tiny.safetensors``.
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    world = get_world(config.world)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_NAME
    resuming = config.resume and state_path.is_file()
    if resuming:
        previous = json.loads((out / "pretrain_config.json").read_text())
        changed = {k for k, v in dataclasses.asdict(config).items()
                   if k not in ("out", "resume", "progress", "threads") and previous.get(k) != v}
        if changed:
            raise ValueError(f"{out} holds a run with other settings ({', '.join(sorted(changed))}): "
                             "use the same settings, another --out, or --no-resume to start over")
    (out / "pretrain_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    # open_clip's CLIPs: untyped, their towers are attributes set at run time.
    model: Any = build_tiny_clip(config.model)
    if config.init:
        model.load_state_dict(initial_state(model, config.init, config.init_towers), strict=True)
    teacher: Any = None
    if config.teacher:
        teacher = build_tiny_clip(config.teacher_model)
        teacher.load_state_dict(initial_state(teacher, config.teacher), strict=True)
        teacher = teacher.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name(config.model))
    channels_last = hasattr(model.visual, "attnpool")  # ResNet towers: oneDNN convs run faster NHWC
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    stem = getattr(model.visual, "conv1", None)
    frozen = stem.trunk if config.freeze_stem and isinstance(stem, ResNetStem) else None
    if config.freeze_stem and frozen is None:
        raise ValueError("--freeze-stem needs a hybrid ViT (a model declared in mvpseg.stems.STEMS)")
    if frozen is not None:
        frozen.requires_grad_(False)
    images, counts, num_pairs = draw_pool(
        config.seed, config.image_size, config.pool, config.twin_fraction, config.threads, config.progress,
        config.stuff_twin_fraction, config.world,
    )
    stuff_pairs = np.array([is_stuff_twin(config.seed, k, config.stuff_twin_fraction) for k in range(num_pairs)],
                           dtype=bool)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1000]))
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(captions: list[str]) -> torch.Tensor:
        missing = [c for c in set(captions) if c not in token_cache]
        if missing:
            for text, row in zip(missing, tokenizer(missing)):
                token_cache[text] = row
        return torch.stack([token_cache[c] for c in captions])  # (B, L)

    weights = out / WEIGHTS_NAME
    metadata = {"model": model_name(config.model), "world": config.world,
                "config": json.dumps(dataclasses.asdict(config))}
    log_path = out / "pretrain_log.csv"
    first_step, running, elapsed = 0, None, 0.0
    header = ["step", "loss", "accuracy", "lr", "logit_scale", "seconds", "distill", "distill_dense"]
    if resuming:
        first_step, running = _load_state(state_path, model, optimizer, rng)
        # keep the log's rows of the steps already taken, and its clock
        rows = list(csv.reader(log_path.open())) if log_path.is_file() else [header]
        rows = [rows[0]] + [row for row in rows[1:] if int(row[0]) < first_step]
        elapsed = float(rows[-1][5]) if len(rows) > 1 else 0.0
        with log_path.open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        print(f"resuming {out} at step {first_step} of {config.steps}", flush=True)
    else:
        with log_path.open("w", newline="") as handle:
            csv.writer(handle).writerow(header)
    log_file = open(log_path, "a", newline="")
    log = csv.writer(log_file)
    start = time.time() - elapsed
    model.train()
    if frozen is not None:
        frozen.eval()  # BatchNorm keeps the statistics it was given
    bar = tqdm(range(first_step, config.steps), desc="pretraining", unit="step", disable=not config.progress,
               initial=first_step, total=config.steps)
    # the curriculum's images: single scenes (no twins) whose only visible thing is large
    visible_things = (counts[:, : len(world.THING_CLASSES)] >= 0.015 * counts[0].sum()).sum(axis=1)
    lone = np.flatnonzero(visible_things == 1)
    lone = lone[lone >= 2 * num_pairs] if (lone >= 2 * num_pairs).any() else lone
    for step in bar:
        warming_up = step < config.curriculum_steps
        if warming_up:
            index = rng.choice(lone, size=config.batch_size, replace=len(lone) < config.batch_size)
        else:
            index = batch_indices(rng, config.batch_size, len(images), num_pairs, config.twin_fraction)
        batch_rngs = np.random.default_rng(rng.integers(2**63))
        captions = []
        for pool_index in index.tolist():
            # twins share one caption rng, so their captions differ only in the swapped word(s)
            twin = pool_index < 2 * num_pairs
            key = (step, pool_index // 2, 0) if twin else (step, pool_index, 1)
            caption_rng = np.random.default_rng(np.random.SeedSequence([config.seed, *key]))
            stuff_twin = twin and stuff_pairs[pool_index // 2]
            stuff_probability = 0.0 if warming_up else (1.0 if stuff_twin else 0.5)
            # thing twins share their stuff: a stuff-only caption could not tell them apart
            stuff_only = (not twin or stuff_twin) and caption_rng.random() < config.stuff_only_fraction
            captions.append(caption_from_counts(counts[pool_index], caption_rng, stuff_probability, stuff_only,
                                                 config.world))
        x = _augment(images[index], batch_rngs)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        text = tokens(captions)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        captured: list[torch.Tensor] = []
        hook = (model.visual.transformer.resblocks[-2].register_forward_hook(
            lambda module, inputs, output, store=captured: store.append(output))
                if teacher is not None and config.distill_dense_weight > 0 else None)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            image_features = F.normalize(model.encode_image(x).float(), dim=-1)  # (B, D)
            text_features = F.normalize(model.encode_text(text).float(), dim=-1)  # (B, D)
        if hook is not None:
            hook.remove()
        scale = model.logit_scale.exp()
        logits = scale * image_features @ text_features.t()  # (B, B)
        targets = torch.arange(len(index))
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
        distill = distill_dense = torch.zeros(())
        if teacher is not None:
            with torch.no_grad():
                target = F.normalize(teacher.encode_image(x).float(), dim=-1)  # (B, D)
            distill = (1 - (image_features * target).sum(dim=-1)).mean()
            loss = loss + config.distill_weight * distill
            if captured:
                distill_dense = _dense_distillation(model.visual, captured[0], teacher, x)
                loss = loss + config.distill_dense_weight * distill_dense
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
        if step % config.log_every == 0 or step == config.steps - 1:
            accuracy = (logits.argmax(dim=1) == targets).float().mean().item()
            log.writerow([step, f"{loss.item():.4f}", f"{accuracy:.3f}", f"{_lr_at(step, config):.6f}",
                          f"{scale.item():.2f}", f"{time.time() - start:.1f}", f"{distill.item():.4f}",
                          f"{distill_dense.item():.4f}"])
            log_file.flush()
        if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < config.steps:
            save_weights(model, weights, metadata={**metadata, "step": str(step + 1)})
            _save_state(state_path, model, optimizer, step + 1, rng, running)
    log_file.close()
    save_weights(model, weights, metadata={**metadata, "step": str(config.steps)})
    return weights


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: flags map onto :class:`PretrainConfig` fields."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(PretrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            parser.add_argument(flag, type=kind, default=field.default)
    args = parser.parse_args(argv)
    weights = pretrain(PretrainConfig(**vars(args)))
    print(f"wrote {weights}")


if __name__ == "__main__":
    main()
