"""Which packages the distribution holds; every other setting is in pyproject.toml.

pyproject's ``packages.find`` names a package after its folder, and two of ours are installed under
other names: ``cli/`` is ``om3db_cli`` and ``migrations/`` is ``om3db.migrations``. So discovery runs
here, over each folder with its installed name, and a new subpackage in any of them ships without
editing a list (docs/install.md, "Packaging").
"""

from setuptools import find_packages, setup

# installed name -> folder in the checkout
PACKAGE_DIR = {"om3db": "om3db", "om3db_cli": "cli", "om3db.migrations": "migrations"}


def _discover() -> list[str]:
    packages = []
    for name, folder in PACKAGE_DIR.items():
        packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]
    return sorted(set(packages))


setup(package_dir=PACKAGE_DIR, packages=_discover())
