"""The one exception the package raises for files and weights it cannot use."""


class TesseraFileError(ValueError):
    """A file, directory or state_dict that is not what tessera wrote or expects.

    The message names the path and, where one is at fault, the tensor:
    ``run/checkpoints/latest: /model/1.weight: has shape [16, 5] but the model has [16, 4]``.
    """

    def __init__(self, where, message):
        super().__init__(f"{where}: {message}")
        self.where = str(where)
