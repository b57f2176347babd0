"""Runtime backends: everything that touches an ML framework lives below this package.

This folder sits at the top of the repository but installs as `localguard.backends`: import it
only under that name. Stages in localguard/ call these modules and never import mlx or llama_cpp
themselves, so the framework-free parts test fast and another backend can be added without
touching the stages.
"""
