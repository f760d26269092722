"""Install the top-level folders under one namespace: `shared/` as `festa.shared`, `server/` as
`festa.server`, `client/` as `festa.client`, `simulations/` as `festa.simulations`.

Everything else about the distribution is in pyproject.toml; this file only maps folders to
package names, which pyproject's static `packages.find` cannot do with a prefix.
"""

from setuptools import find_packages, setup

FOLDERS = ("shared", "server", "client", "simulations")

packages = [
    f"festa.{name}"
    for folder in FOLDERS
    for name in [folder, *(f"{folder}.{sub}" for sub in find_packages(folder))]
]
setup(packages=packages, package_dir={f"festa.{folder}": folder for folder in FOLDERS})
