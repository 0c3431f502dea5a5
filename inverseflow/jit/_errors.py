"""What run-time specialization raises and warns."""


class JitError(RuntimeError):
    """A layer shape could not be specialized at run time; the message says why."""


class ToolchainError(JitError):
    """No usable compiler, headers or build record: no shape can be specialized here."""


class CompileError(JitError):
    """The compiler failed on one layer shape; the message holds its last lines of output."""


class JitWarning(RuntimeWarning):
    """INVERSEFLOW_JIT=1 could not specialize a shape; the generic kernel goes on."""
