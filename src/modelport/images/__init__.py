"""Container images of modelport projects: the Containerfile, the wheels it installs offline, and the
engines (docker, podman, buildah) that build and push it.

Used by the `modelport build` command (cli/build.py). Import the modules themselves: `images.build`
(`build_image`, `prepare_context`), `images.containerfile` (`render_containerfile`), `images.engines`
(`detect_engine`, `ContainerEngine`), `images.wheelhouse`; this file imports nothing, so that the CLI can read
their constants without loading the spec and pydantic.
"""
