"""recone-lite: teach an LLM to think before it recommends (RecZero / RecOne, arXiv 2510.23077).

Importing this package is cheap: it imports no torch, touches no GPU, no network and no disk
(only the standard `logging`, to drop one bitsandbytes warning below).
"""

__version__ = "0.1.0"


def _quiet_bitsandbytes_cpu_kernel_warning() -> None:
    """Drop bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning.

    bitsandbytes (0.50 here; imported by peft / transformers / trl) logs it on import, on a CPU
    with AVX512-BF16 unless the optional `kernels` package can fetch a fused CPU 4-bit kernel
    from the hub. recone-lite never runs 4-bit weights on the CPU (models.py loads fp32 there;
    4-bit is CUDA only), so on CPU every command printed a warning about a kernel it never uses.
    Only that record of that logger is dropped; every other bitsandbytes message still shows.
    """
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_Drop())


_quiet_bitsandbytes_cpu_kernel_warning()
