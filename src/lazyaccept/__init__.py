"""lazyaccept: TDVF lazy memory acceptance for Intel TDX guests, modelled and run on real binaries."""

__version__ = "0.1.0"
