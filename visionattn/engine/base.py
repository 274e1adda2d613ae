"""The base of every task model: mmengine's BaseModel with the initialisation rule the zoo needs."""
from mmengine.model import BaseModel

__all__ = ['TaskModel']


class TaskModel(BaseModel):
    """A task model whose networks initialise themselves (and load pretrained weights) when they are built.

    mmengine's runner calls ``init_weights()`` on the model before training; BaseModel's version walks the children
    and calls each one's ``init_weights``, which for timm's ResNet re-draws every weight and silently wipes a
    ``pretrained=True`` backbone. Only an explicit ``init_cfg`` is applied here.
    """

    def init_weights(self) -> None:
        if self.init_cfg:
            super().init_weights()
