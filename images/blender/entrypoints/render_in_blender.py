"""Run by blender (`blender -b scene.blend --python render_in_blender.py -- settings.json`): applies
the settings render_entrypoint.py wrote and renders each frame of each crop, printing
`RENDERED <path>` for each image saved."""

import json
import sys
from pathlib import Path

import bpy

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "OPEN_EXR": "exr", "BMP": "bmp", "TIFF": "tif", "TARGA": "tga"}


def apply(scene, settings):
    render = scene.render
    if render.engine != "CYCLES":
        # EEVEE and Workbench draw with OpenGL, which a container without a GPU or display lacks.
        print(f"render engine {render.engine} needs OpenGL: rendering with Cycles instead", flush=True)
        render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    if scene.cycles.use_denoising:
        # Debian's blender is built without OpenImageDenoise: Cycles would fail the render.
        print("denoising is not available in this build: rendering without it", flush=True)
        scene.cycles.use_denoising = False
    if settings.get("resolution"):
        render.resolution_x, render.resolution_y = settings["resolution"]
        render.resolution_percentage = 100
    if settings.get("samples"):
        scene.cycles.samples = int(settings["samples"])
        scene.cycles.use_adaptive_sampling = False
    if settings.get("use_compositing") is not None:
        render.use_compositing = bool(settings["use_compositing"])
    if settings.get("threads"):
        render.threads_mode = "FIXED"
        render.threads = int(settings["threads"])
    render.image_settings.file_format = settings["output_format"]


def crop_to(render, crop):
    (min_x, max_x), (min_y, max_y) = crop.get("borders_x", [0.0, 1.0]), crop.get("borders_y", [0.0, 1.0])
    whole = (min_x, max_x, min_y, max_y) == (0.0, 1.0, 0.0, 1.0)
    render.use_border = not whole
    render.use_crop_to_border = not whole
    render.border_min_x, render.border_max_x = min_x, max_x
    render.border_min_y, render.border_max_y = min_y, max_y


def main():
    settings = json.loads(Path(sys.argv[sys.argv.index("--") + 1]).read_text())
    scene = bpy.context.scene
    apply(scene, settings)
    output_dir = Path(settings["OUTPUT_DIR"])
    extension = EXTENSIONS[settings["output_format"]]
    frames = settings.get("frames") or [scene.frame_current]
    for crop in settings["crops"]:
        crop_to(scene.render, crop)
        for frame in frames:
            scene.frame_set(frame)
            path = output_dir / f"{crop.get('outfilebasename', 'out')}{frame:04d}.{extension}"
            bpy.ops.render.render()
            bpy.data.images["Render Result"].save_render(filepath=str(path), scene=scene)
            print(f"RENDERED {path}", flush=True)


main()
