"""cloudalliance: the Intel Image Classification course, local and on AWS."""

__version__ = "0.1.0"
