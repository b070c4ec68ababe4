"""Run a saved policy for a few episodes and optionally write a GIF of the first one.

    python -m reinforcement_learning.scripts.play \
        --model runs/quick/reinforcement-learning/CartPole-v1/distill/dagger/seed-0/model \
        --gif runs/quick/reinforcement-learning/CartPole-v1/dagger.gif

``--model`` is a student folder (model.safetensors + config.json, run without SB3) or a
teacher folder from train_teacher.py (ppo.zip); a PPO zip from elsewhere plays with
``--env-id``. Nothing is unpickled: a teacher is read as :func:`load_teacher` reads it.
Rendering is ``rgb_array``: no display needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.cli import parse_args, run_main
from common.errors import CheckpointError, ConfigError
from common.io import atomic_path
from reinforcement_learning.envs import Act, SpaceSpec, check_same_spaces, make_env, space_spec
from reinforcement_learning.model_io import CONFIG, StudentPolicy


@dataclass
class Args:
    """Run a saved student or teacher policy; optionally record a GIF."""

    model: Path = Path("runs/quick/reinforcement-learning/CartPole-v1/distill/dagger/seed-0/model")
    """A student folder (from distill.py) or a teacher folder (from train_teacher.py)."""
    env_id: str | None = None
    """Environment; unset: the one the policy was trained on (required for a PPO zip without
    train_teacher's config.json)."""
    episodes: int = 3
    """Episodes to run; episode i is reset with seed + i."""
    seed: int = 0
    """Seed of the first episode."""
    stochastic: bool = False
    """Sample actions instead of taking the most likely one."""
    gif: Path | None = None
    """Write the first episode as an animated GIF here."""
    gif_frames: int = 200
    """At most this many frames in the GIF (a short clip, not the whole episode)."""
    frame_skip: int = 2
    """Keep every n-th rendered step in the GIF."""
    fps: int = 25
    """GIF frames per second."""
    width: int = 320
    """GIF width in pixels (height keeps the aspect ratio)."""


def load_policy(
    path: Path, stochastic: bool = False, env_id: str | None = None
) -> tuple[Act, SpaceSpec, str | None, str]:
    """A batch action function for a saved student or teacher, its spaces, its environment id
    (if recorded) and a short description. ``env_id`` builds a teacher that does not record
    its environment (a PPO zip from elsewhere)."""
    path = Path(path)
    config = path / CONFIG
    raw = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    if raw.get("family") == "compact-mlp":
        student = StudentPolicy.load(path)
        cfg = student.config
        spec = SpaceSpec(
            cfg.obs_dim,
            cfg.continuous,
            cfg.action_dim,
            tuple(cfg.action_low) if cfg.action_low else None,
            tuple(cfg.action_high) if cfg.action_high else None,
        )

        def act(obs: np.ndarray) -> np.ndarray:
            return np.asarray(student.predict(obs, deterministic=not stochastic))

        return act, spec, cfg.env_id, f"student {cfg.family} {cfg.hidden}"
    # A teacher needs stable-baselines3 (imported only here, so students play without it).
    from reinforcement_learning.pipeline import greedy
    from reinforcement_learning.teacher_model.ppo import TEACHER_ZIP, load_teacher

    if path.is_dir() and not (path / TEACHER_ZIP).is_file():
        raise CheckpointError(
            f"{path} holds neither a student ({CONFIG} + model.safetensors from distill.py) nor "
            f"a teacher ({TEACHER_ZIP} from train_teacher.py); pass the model/ folder of a run"
        )
    if stochastic:
        raise ConfigError("--stochastic is supported for students only; drop it for a teacher")
    teacher = load_teacher(path, env_id=env_id)
    return greedy(teacher.policy, teacher.spec), teacher.spec, teacher.env_id, "PPO teacher"


def write_gif(frames: list[np.ndarray], path: Path, fps: int, width: int) -> Path:
    """Frames (H, W, 3 uint8) as a looping GIF, resized to ``width``, written atomically."""
    if not frames:
        raise ConfigError("no frames to write: the episode rendered nothing")
    h, w = frames[0].shape[:2]
    size = (width, max(1, round(h * width / w)))
    images = [Image.fromarray(f).resize(size, Image.Resampling.BILINEAR) for f in frames]
    with atomic_path(Path(path)) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=max(1, round(1000 / fps)),
            loop=0,
        )
    return Path(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv, {})
    # rgb_array rendering draws off-screen: SDL's dummy driver needs no display (and does not
    # warn about a missing XDG_RUNTIME_DIR on a headless machine).
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    act, spec, trained_on, what = load_policy(args.model, args.stochastic, args.env_id)
    env_id = args.env_id or trained_on
    if env_id is None:
        raise ConfigError(f"{args.model} does not record its environment; pass --env-id")
    returns, frames = [], []
    for i in range(args.episodes):
        record = args.gif is not None and i == 0
        env = make_env(env_id, render_mode="rgb_array" if record else None)
        try:
            check_same_spaces(
                spec, space_spec(env.observation_space, env.action_space), str(args.model), env_id
            )
            obs, _ = env.reset(seed=args.seed + i)
            total, done, step = 0.0, False, 0
            while not done:
                if record and step % args.frame_skip == 0 and len(frames) < args.gif_frames:
                    frames.append(env.render())
                action = act(np.asarray(obs, dtype=np.float32)[None])[0]
                obs, reward, terminated, truncated, _ = env.step(
                    action if spec.continuous else int(action)
                )
                total += float(reward)
                done = terminated or truncated
                step += 1
        finally:
            env.close()
        returns.append(total)
        print(f"episode {i} (seed {args.seed + i}): return {total:.1f} in {step} steps")
    print(f"{what} on {env_id}: mean return {np.mean(returns):.1f} over {len(returns)} episodes")
    gif = None
    if args.gif is not None:
        gif = write_gif(frames, args.gif, args.fps, args.width)
        print(f"GIF ({len(frames)} frames): {gif}")
    return {"returns": returns, "gif": str(gif) if gif else None, "env_id": env_id}


if __name__ == "__main__":
    run_main(main)
