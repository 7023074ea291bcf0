"""A procedural story world: simple characters in simple scenes, drawn from known attributes.

Pure (Pillow + torch, no ComfyUI): the world's vocabulary, its drawing, the captions written
from the attributes, and the attribute reader trained on the world's own images. The toy
text-to-image model shipped with the pack (models/story_world/) was trained on these images;
bench/bench_consistency.py reads its panels back with the reader.
"""
