# Type stubs of the towerrec package (hand-written; tests/python/test_stubs.py
# checks they cover every public name and method).
import os
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import pandas as pd

__version__: str
PAD_ID: int

class Error(RuntimeError): ...

class InputError(Error, ValueError):
    file: str
    line: int
    field: str
    def __init__(self, message: str, file: str = ..., line: int = ..., field: str = ...) -> None: ...

def cuda_available() -> bool: ...
def config_keys() -> dict[str, str]: ...

_Ids = Union[Sequence[Any], npt.ArrayLike]
_Result = Tuple[np.ndarray, npt.NDArray[np.float32]]

class TwoTower:
    device: str
    threads: int
    loss_history_: list[float]
    validation_metrics_: Optional[dict[str, float]]
    def __init__(self, *, device: str = ..., threads: int = ..., **config: Any) -> None: ...
    def get_params(self, deep: bool = ...) -> dict[str, Any]: ...
    def set_params(self, **params: Any) -> "TwoTower": ...
    def effective_config(self) -> dict[str, Any]: ...
    def fit(
        self,
        interactions: Any,
        user_features: Optional[pd.DataFrame] = ...,
        item_features: Optional[pd.DataFrame] = ...,
        validation: Union[float, pd.DataFrame, Any, None] = ...,
        *,
        callback: Optional[Callable[[dict[str, Any]], Optional[bool]]] = ...,
        show_progress: bool = ...,
    ) -> "TwoTower": ...
    def save(self, path: Union[str, os.PathLike[str]]) -> None: ...
    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike[str]],
        device: str = ...,
        threads: int = ...,
        id_type: Optional[type] = ...,
    ) -> "TwoTower": ...
    @property
    def user_ids(self) -> np.ndarray: ...
    @property
    def item_ids(self) -> np.ndarray: ...
    @property
    def user_embeddings(self) -> npt.NDArray[np.float32]: ...
    @property
    def item_embeddings(self) -> npt.NDArray[np.float32]: ...
    @property
    def backend(self) -> str: ...
    @property
    def checkpoint_config(self) -> dict[str, Any]: ...
    def recommend(
        self,
        users: Any,
        N: int = ...,
        filter_already_liked_items: bool = ...,
        filter_items: Optional[Iterable[Any]] = ...,
        items: Optional[Iterable[Any]] = ...,
    ) -> _Result: ...
    def recommend_from_history(
        self,
        histories: Any,
        N: int = ...,
        filter_already_liked_items: bool = ...,
        filter_items: Optional[Iterable[Any]] = ...,
        items: Optional[Iterable[Any]] = ...,
    ) -> _Result: ...
    def recommend_all(self, N: int = ..., filter_already_liked_items: bool = ...) -> pd.DataFrame: ...
    def similar_items(self, items: Any, N: int = ...) -> _Result: ...
    def similar_users(self, users: Any, N: int = ...) -> _Result: ...

def evaluate(
    model: TwoTower,
    test: Any,
    k: Union[int, Sequence[int]] = ...,
    filter_already_liked_items: bool = ...,
) -> dict[str, float]: ...
