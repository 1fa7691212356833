"""Support code for the container tests: a throwaway podman, stand-in images, an event reader."""
