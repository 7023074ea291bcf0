"""The toy text-to-image model of the story world, built from ComfyUI's own classes (needs ComfyUI)."""
