"""lingua_ray: linguistic regions and semantic alignment in multilingual LMs, on Ray and Zarr.

Data flows one way: corpus → capture → store → reduce → metrics → results → report.
"""

__version__ = "0.1.0"
