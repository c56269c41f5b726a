"""WebShop (Yao et al., 2022) re-implemented: the catalogue, goals and reward (this package), the shop
engine and ``SDAR/WebShop-v0``."""
