"""The scenario catalog goes into the package: a checkout keeps it in `scenarios/` (the
folder users read and edit), and a wheel carries a copy in `testbed/catalog/`, so an
installed `testbed run wan-outage-long` finds it from any folder. Everything else about the
build is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CATALOG = Path(__file__).parent / "scenarios"


class BuildWithCatalog(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads `scenarios/` in the checkout itself
        target = Path(self.build_lib) / "testbed" / "catalog"
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(CATALOG.iterdir()):
            if source.suffix in (".yaml", ".yml", ".md"):
                self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildWithCatalog})
