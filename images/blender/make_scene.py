"""Makes the small scene the blender stand-in carries (/golem/scenes/cubes.blend), run when the
image is built: `blender --background --factory-startup --python make_scene.py -- cubes.blend`.

Three coloured cubes on a floor, a camera and a sun; the cubes turn and rise over frames 0..60, so
that the frames yapapi's example asks for (0, 10, ... 50) differ. Cycles at 400x300, 16 samples."""

import math
import sys

import bpy

output = sys.argv[sys.argv.index("--") + 1]
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene


def material(name, rgb):
    made = bpy.data.materials.new(name)
    made.use_nodes = True
    made.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*rgb, 1.0)
    return made


bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, 0))
bpy.context.object.data.materials.append(material("floor", (0.6, 0.6, 0.6)))
for index, (x, rgb) in enumerate([(-2.5, (0.8, 0.1, 0.1)), (0, (0.1, 0.7, 0.1)), (2.5, (0.1, 0.2, 0.8))]):
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(x, 0, 0.75))
    cube = bpy.context.object
    cube.name = f"cube{index}"
    cube.data.materials.append(material(f"cube{index}", rgb))
    for frame, turn, height in ((0, 0.0, 0.75), (60, math.pi / 2 * (index + 1), 0.75 + index)):
        cube.rotation_euler = (0, 0, turn)
        cube.location.z = height
        cube.keyframe_insert("rotation_euler", frame=frame)
        cube.keyframe_insert("location", frame=frame)

bpy.ops.object.camera_add(location=(0, -11, 5.5), rotation=(math.radians(68), 0, 0))
scene.camera = bpy.context.object
bpy.ops.object.light_add(type="SUN", rotation=(math.radians(40), math.radians(20), 0))
bpy.context.object.data.energy = 4.0
world = bpy.data.worlds.new("sky")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.5, 0.6, 0.8, 1.0)
scene.world = world

scene.frame_start, scene.frame_end, scene.frame_current = 0, 60, 0
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 16
scene.cycles.use_denoising = False  # Debian builds Cycles without OpenImageDenoise
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 400, 300, 100
bpy.ops.wm.save_as_mainfile(filepath=output, compress=True)
print(f"saved {output}")
