"""The version of stemsplit: one home, read by the package, the command line, downloads and the build
(pyproject: ``version = { attr = ... }``)."""

__version__ = "0.1.0"
