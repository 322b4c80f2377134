"""errors.explain: the one place that turns failures from outside featdistill's checks into exit-2 messages."""

import errno

from featdistill.errors import FeatdistillError, explain


def test_known_failures_become_messages_with_the_fix():
    full = explain(OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoint.pt"))
    assert isinstance(full, FeatdistillError) and "disk is full writing /runs/x/checkpoint.pt" in str(full)
    assert "--resume" in str(full)
    denied = explain(PermissionError(errno.EACCES, "Permission denied", "/etc/cache"))
    assert "no permission to write /etc/cache" in str(denied) and "$FEATDISTILL_CACHE" in str(denied)
    assert "cannot use /a/file/run" in str(explain(NotADirectoryError(errno.ENOTDIR, "Not a directory",
                                                                      "/a/file/run")))
    oom = explain(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 240000000000 bytes."))
    assert "out of memory" in str(oom) and "train.batch_size" in str(oom) and "data.image_size" in str(oom)
    assert "out of memory" in str(explain(MemoryError()))


def test_anything_else_stays_a_bug():
    assert explain(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert explain(KeyError("weights")) is None
    assert explain(OSError(errno.EIO, "Input/output error")) is None
    known = FeatdistillError("already explained")
    assert explain(known) is known
