#!/usr/bin/env python3
"""Renders what params.json asks for, with Debian's blender in the background (no display, no GPU).

params.json (in the working directory, or the path given as the first argument) holds what yapapi's
blender example uploads:

    scene_file       the .blend to render (required)
    frames           the frame numbers to render (default: the scene's current frame)
    resolution       [width, height] in pixels (default: the scene's)
    samples          Cycles samples per pixel (default: the scene's)
    use_compositing  whether the compositor runs after rendering (default: the scene's)
    crops            [{"outfilebasename": ..., "borders_x": [min, max], "borders_y": [min, max]}]:
                     one image per crop and frame, the part of the frame within the borders (0..1)
    output_format    PNG (default), JPEG, OPEN_EXR, BMP, TIFF or TARGA
    OUTPUT_DIR       where the images go (default /golem/output)
    WORK_DIR         where blender's log goes (default: the working directory)

Each image is OUTPUT_DIR/<outfilebasename><frame:04d>.<extension>, e.g. /golem/output/out0010.png.
Exits non-zero, with the end of blender's log on stderr, when an image was not written.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
IN_BLENDER = HERE / "render_in_blender.py"
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "OPEN_EXR": "exr", "BMP": "bmp", "TIFF": "tif", "TARGA": "tga"}
FORMAT_ALIASES = {"JPG": "JPEG", "EXR": "OPEN_EXR", "TIF": "TIFF", "TGA": "TARGA"}
WHOLE_FRAME = {"outfilebasename": "out", "borders_x": [0.0, 1.0], "borders_y": [0.0, 1.0]}


def fail(message):
    print(f"render_entrypoint: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def cpu_quota():
    """The CPUs this container may use (its cgroup's quota), at least 1; None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            return max(1, round(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return None


def read_params(path):
    try:
        params = json.loads(path.read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except ValueError as exc:
        fail(f"{path} is not JSON: {exc}")
    if not isinstance(params, dict) or not params.get("scene_file"):
        fail(f"{path} names no scene_file")
    output_format = str(params.get("output_format") or "PNG").upper()
    output_format = FORMAT_ALIASES.get(output_format, output_format)
    if output_format not in EXTENSIONS:
        fail(f"output_format {params['output_format']!r} is not one of {', '.join(EXTENSIONS)}")
    params["output_format"] = output_format
    resolution = params.get("resolution")
    if resolution is not None and not (isinstance(resolution, list) and len(resolution) == 2
                                       and all(isinstance(n, int) and n > 0 for n in resolution)):
        fail(f"resolution {resolution!r} is not [width, height]")
    frames = params.get("frames")
    if frames is not None and not (isinstance(frames, list) and all(isinstance(f, int) for f in frames)):
        fail(f"frames {frames!r} is not a list of frame numbers")
    crops = params.get("crops") or [WHOLE_FRAME]
    for crop in crops:
        for key in ("borders_x", "borders_y"):
            low, high = crop.get(key, [0.0, 1.0])
            if not 0.0 <= low < high <= 1.0:
                fail(f"crop {crop!r}: {key} is not [min, max] within 0..1")
    params["crops"] = crops
    return params


def main():
    params_path = Path(sys.argv[1] if len(sys.argv) > 1 else "params.json").resolve()
    params = read_params(params_path)
    scene = Path(params["scene_file"])
    if not scene.is_file():
        fail(f"the scene {scene} is not there (upload it first)")
    output_dir = Path(params.get("OUTPUT_DIR") or "/golem/output")
    work_dir = Path(params.get("WORK_DIR") or Path.cwd())
    output_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    params["OUTPUT_DIR"] = str(output_dir)
    params["threads"] = cpu_quota()
    settings = work_dir / "render_settings.json"
    settings.write_text(json.dumps(params))
    log = work_dir / "blender.log"
    env = dict(os.environ, HOME=os.environ.get("HOME") or "/root")
    env.pop("DISPLAY", None)
    command = ["blender", "--background", str(scene), "--python-exit-code", "3", "--python", str(IN_BLENDER),
               "--", str(settings)]
    print(f"rendering {scene} (frames {params.get('frames') or 'current'}, "
          f"{len(params['crops'])} crop(s), {params['output_format']}) into {output_dir}", flush=True)
    started = time.monotonic()
    with log.open("wb") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work_dir)
    said = log.read_text(errors="replace").splitlines()
    written = [line.split(" ", 1)[1] for line in said if line.startswith("RENDERED ")]
    missing = [path for path in written if not Path(path).is_file()]
    if code != 0 or not written or missing:
        tail = "\n".join(said[-40:])
        fail(f"blender exited with {code}; the end of its log ({log}):\n{tail}")
    for path in written:
        print(f"rendered {path} ({Path(path).stat().st_size} bytes)", flush=True)
    print(f"{len(written)} image(s) in {time.monotonic() - started:.1f}s", flush=True)


if __name__ == "__main__":
    main()
