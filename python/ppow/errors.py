"""One exception type for everything ppow refuses: bad files, bad parameters, closed generators."""


class PpowError(RuntimeError):
    pass
