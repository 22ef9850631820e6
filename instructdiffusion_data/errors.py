"""User-facing errors: each prints as one line naming the file, record, key or field at fault."""


class UserError(Exception):
    """An error caused by input or configuration, reported as one line without a traceback."""


class ConfigError(UserError):
    """A pipeline config is wrong: missing path, unknown key, wrong type. Raised before any work."""


class RecordError(UserError):
    """One source record is unusable; the run counts it, keeps it in rejected/ and continues."""

    def __init__(self, reason: str, *, file: str | None = None, record: str | None = None, field: str | None = None,
                 **detail):
        # ``reason`` is the drop class (the same text for every record with this fault); measured values
        # (sizes, counts) go in ``detail`` and become keyword details of the drop (schema.drop)
        self.reason = reason
        self.file = file
        self.record = record
        self.field = field
        self.detail = {k: v for k, v in detail.items() if v is not None}
        where = ", ".join(f"{k}={v}" for k, v in (("file", file), ("record", record), ("field", field),
                                                  *self.detail.items()) if v is not None and v != "")
        super().__init__(f"{reason} ({where})" if where else reason)
