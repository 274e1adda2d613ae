"""Image classification: any timm or zoo model by name as an mmengine task model, the whole task.

Modules: ``task`` (the task model, its collate and the datasets' registrations) and ``data`` (scikit-learn's digits
and the ImageFolder datasets) need the ``[train]`` extra. This file imports none of them.
"""
