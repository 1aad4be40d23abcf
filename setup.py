"""Build ipvsflow's Cython extensions.

Every ``.pyx`` under ``ipvsflow/`` is one extension module named after its path. Set
``IPVSFLOW_EXT`` to a regular expression to build only the modules whose dotted name matches
(useful while working on one stage: ``IPVSFLOW_EXT=io python setup.py build_ext --inplace``).
``IPVSFLOW_DEBUG=1`` keeps bounds checks and asserts on.
"""
import os
import re
from pathlib import Path

from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent


def _extensions():
    from Cython.Build import cythonize

    debug = os.environ.get("IPVSFLOW_DEBUG") == "1"
    only = os.environ.get("IPVSFLOW_EXT")
    exts = []
    for pyx in sorted(HERE.glob("ipvsflow/**/*.pyx")):
        rel = pyx.relative_to(HERE)
        name = ".".join(rel.with_suffix("").parts)
        if only and not re.search(only, name):
            continue
        exts.append(Extension(
            name, [str(rel)],
            extra_compile_args=["-O3", "-fno-strict-aliasing"] + ([] if debug else ["-DNDEBUG"]),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        ))
    return cythonize(
        exts,
        language_level=3,
        nthreads=int(os.environ.get("IPVSFLOW_JOBS", "0")) or None,
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": debug,
            "embedsignature": True,
        },
    )


setup(
    name="ipvsflow",
    version="0.1.0",
    description="Userspace IPVS connection engine: offline pcap analysis, live AF_PACKET director, benchmarks",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ipvsflow", "ipvsflow.*"]),
    package_data={"ipvsflow": ["**/*.pxd", "**/*.pyx", "data/*"]},
    ext_modules=_extensions(),
    install_requires=["numpy>=1.24", "rich>=13"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-benchmark>=4", "pyshark>=0.6", "dpkt>=1.9", "scapy>=2.5",
                 "pyarrow>=12", "matplotlib>=3.6", "prometheus-client>=0.17"],
        "live": ["prometheus-client>=0.17"],
        "plot": ["matplotlib>=3.6"],
        "parquet": ["pyarrow>=12"],
    },
    entry_points={"console_scripts": ["ipvsflow=ipvsflow.cli:main"]},
    zip_safe=False,
)
