"""hastack: a highly available web site on your own servers, or on one box as a lab."""

__version__ = "0.1.0"
