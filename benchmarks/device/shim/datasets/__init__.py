"""A stand-in for the ``datasets`` package on the lent GPU machine, whose image lacks it and cannot
install it (no registry there): just what ``kn_lib.data`` uses (``Dataset.from_dict``, rows, columns).
``run_gpu.sh`` puts it on the path only where ``import datasets`` fails. Not part of kn_lib."""


class Dataset:
    def __init__(self, cols: dict) -> None:
        self._cols = {k: list(v) for k, v in cols.items()}

    @classmethod
    def from_dict(cls, cols: dict) -> "Dataset":
        return cls(cols)

    @classmethod
    def from_pandas(cls, frame, preserve_index: bool = False) -> "Dataset":
        return cls({c: frame[c].tolist() for c in frame.columns})

    def __len__(self) -> int:
        return len(next(iter(self._cols.values()), []))

    def to_list(self) -> list[dict]:
        keys = list(self._cols)
        return [dict(zip(keys, row)) for row in zip(*self._cols.values())]

    def __iter__(self):
        return iter(self.to_list())

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._cols[key]
        return self.to_list()[key]

    @property
    def column_names(self) -> list[str]:
        return list(self._cols)

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self._cols)
